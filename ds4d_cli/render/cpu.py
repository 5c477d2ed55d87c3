"""CPU backend: tiled front-to-back compositing with 16 px tiles and per-tile depth order.

Two implementations of the same maths (see :mod:`.projection` for the constants):

- the C++ kernel (:mod:`.build`, ``csrc/raster.cpp``), used whenever it builds. In the common
  case (float32/64, RGB or SH degree 0..3, cameras without gradients) :func:`fused_render` runs
  the whole render in it: projection and colours (``_ExtProject``), then depth sort, tile
  binning, compositing and gradient gathering (``_ExtRasterize``), each with a hand-written
  backward. Two autograd Functions rather than one so that ``means2d`` is a real intermediate
  whose ``.grad`` (retained by gsplat's DefaultStrategy) is the full gradient that reaches it.
  Otherwise :func:`composite` puts the same compositor behind the torch projection;
- a pure-torch fallback (``DS4D_RENDER_EXT=0``): tiles are grouped into buckets by load (lists
  padded to the next power of two, not to the busiest tile), each bucket is evaluated in bounded
  chunks ([tiles, 256 px, K] at a time) and recomputed in backward by checkpointing.

torch work around the kernel is single-threaded (see :mod:`.serial`); the kernel has its own
threads (:func:`kernel_threads`).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from . import build as _build
from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, num_tiles
from .serial import one_thread, run_serial

TILE = 16
_CHUNK_ELEMS = 1 << 21  # pixel x Gaussian pairs per torch-fallback chunk


def kernel_threads() -> int:
    """Threads for the C++ kernel: ``DS4D_RENDER_THREADS``, else every CPU this process may use.

    Independent of torch's intra-op setting on purpose: a caller may pin torch to one thread
    (small ops suffer from OpenMP on a busy machine) while the kernel, which hands tiles out
    through a shared counter and so tolerates a descheduled worker, still uses all cores.
    """
    env = os.environ.get("DS4D_RENDER_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 16))
    except AttributeError:  # not Linux
        return max(1, min(os.cpu_count() or 1, 16))


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def depth_order(depths: Tensor, radii: Tensor) -> Tensor:
    """[C,N] Gaussian indices per camera, front to back; culled ones last (stable on ties)."""
    visible = (radii > 0).all(dim=-1)
    key = torch.where(visible, depths.detach(), torch.full_like(depths, float("inf")))
    return torch.argsort(key, dim=1, stable=True)


# --------------------------------------------------------------------------- C++ kernel
# Work counters of the compositor (pairs composited, lanes evaluated), summed over forward calls
# while a caller collects them (the benchmark's FLOP floor); None = not counted.
_STATS: Optional[Tensor] = None


def count_work(enable: bool = True) -> Optional[Tensor]:
    """Start (reset) or stop counting the compositor's work; returns the int64 [pairs, lanes]
    counter being filled: pairs are Gaussian-pixel pairs with alpha >= 1/255 that reached
    compositing, lanes the SIMD lanes evaluated (8 pixels per vector)."""
    global _STATS
    _STATS = torch.zeros(2, dtype=torch.int64) if enable else None
    return _STATS


def _sfx(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


class _ExtRasterize(torch.autograd.Function):
    """Depth sort, tile binning and compositing in the C++ kernel; its backward sums the
    per-intersection gradients per (camera, Gaussian) in C++ too."""

    @staticmethod
    def forward(ctx, means2d, conics, feats, opacities, depths, radii, width, height, lib, n_threads):
        C, N, D = feats.shape
        sfx = _sfx(feats.dtype)
        m2, con, f, op = (t.detach().contiguous() for t in (means2d, conics, feats, opacities))
        dep = depths.detach()
        if dep.dim() != 2 or dep.stride(0) != dep.stride(1) * N:  # flat-indexable with one stride
            dep = dep.contiguous()
        n_tiles = num_tiles(width, TILE) * num_tiles(height, TILE)
        order = torch.empty(C * N, dtype=torch.int32)
        n_vis = torch.empty(C, dtype=torch.int32)
        offsets = torch.empty(C * n_tiles + 1, dtype=torch.int64)
        total = getattr(lib, f"ds4d_bin_{sfx}")(
            C, N, width, height, _ptr(m2), _ptr(radii), _ptr(dep), dep.stride(1), _ptr(order),
            _ptr(n_vis), _ptr(offsets), n_threads,
        )
        ids = torch.empty(total, dtype=torch.int32)
        packed = torch.empty(C * N, getattr(lib, f"ds4d_record_size_{sfx}")(D), dtype=feats.dtype)
        img = torch.empty(C, height, width, D, dtype=feats.dtype)
        trans = torch.empty(C, height, width, dtype=feats.dtype)
        last = torch.empty(C, height, width, dtype=torch.int32)
        getattr(lib, f"ds4d_forward_{sfx}")(
            C, N, D, width, height, _ptr(m2), _ptr(con), _ptr(f), _ptr(op), _ptr(radii), _ptr(order),
            _ptr(n_vis), _ptr(offsets), _ptr(ids), _ptr(packed), _ptr(img), _ptr(trans), _ptr(last),
            _ptr(_STATS) if _STATS is not None else None, n_threads,
        )
        ctx.save_for_backward(packed, order, offsets, ids, trans, last)
        ctx.dims = (C, N, D, width, height)
        ctx.lib = lib
        ctx.n_threads = n_threads
        return img, (1.0 - trans).unsqueeze(-1)

    @staticmethod
    def backward(ctx, v_img, v_alpha):
        packed, order, offsets, ids, trans, last = ctx.saved_tensors
        C, N, D, width, height = ctx.dims
        dtype = packed.dtype
        g_m2 = torch.empty(C, N, 2, dtype=dtype)
        g_con = torch.empty(C, N, 3, dtype=dtype)
        g_f = torch.empty(C, N, D, dtype=dtype)
        g_op = torch.empty(C, N, dtype=dtype)
        vi = None if v_img is None else v_img.to(dtype).contiguous()
        va = None if v_alpha is None else v_alpha[..., 0].to(dtype).contiguous()
        getattr(ctx.lib, f"ds4d_backward_{_sfx(dtype)}")(
            C, N, D, width, height, _ptr(packed), _ptr(order), _ptr(offsets), _ptr(ids), _ptr(trans),
            _ptr(last), _ptr(vi), _ptr(va), _ptr(g_m2), _ptr(g_con), _ptr(g_f), _ptr(g_op),
            ctx.n_threads,
        )
        return g_m2, g_con, g_f, g_op, None, None, None, None, None, None


def _camera_stride(x: Tensor, C: int, base_dims: int, name: str) -> int:
    """Elements between cameras in a [N,...] (shared: 0) or [C,N,...] (per camera) input."""
    if x.dim() == base_dims:
        return 0
    if x.dim() == base_dims + 1 and x.shape[0] == C:
        return x[0].numel()
    raise ValueError(f"{name}: expected {base_dims} dims or [C={C},...], got {tuple(x.shape)}")


class _ExtProject(torch.autograd.Function):
    """EWA projection and colour evaluation in the C++ kernel, with its hand-written backward.

    Outputs per (camera, Gaussian): means2d [C,N,2], conics [C,N,3], features [C,N,4] (rgb and
    camera z), opacities [C,N] and int32 radii [C,N,2] (not differentiable). Shared inputs
    ([N,...]) are read once per camera in place and their gradients summed over cameras.
    """

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                lib, n_threads):
        C, N = viewmats.shape[0], means.shape[-2]
        dtype = means.dtype
        inputs = [t.detach().contiguous() for t in (means, quats, scales, opacities, colors, viewmats, Ks)]
        strides = torch.tensor(
            [_camera_stride(inputs[0], C, 2, "means"), _camera_stride(inputs[1], C, 2, "quats"),
             _camera_stride(inputs[2], C, 2, "scales"), _camera_stride(inputs[3], C, 1, "opacities"),
             _camera_stride(inputs[4], C, 2 if sh_degree is None else 3, "colors")],
            dtype=torch.int64,
        )
        k_sh = 1 if sh_degree is None else colors.shape[-2]
        dims = torch.tensor([C, N, width, height, -1 if sh_degree is None else sh_degree, k_sh],
                            dtype=torch.int64)
        means2d = torch.empty(C, N, 2, dtype=dtype)
        conics = torch.empty(C, N, 3, dtype=dtype)
        feats = torch.empty(C, N, 4, dtype=dtype)
        opac_c = torch.empty(C, N, dtype=dtype)
        radii = torch.empty(C, N, 2, dtype=torch.int32)
        getattr(lib, f"ds4d_project_{_sfx(dtype)}")(
            _ptr(dims), _ptr(strides), *[_ptr(t) for t in inputs], _ptr(means2d), _ptr(conics),
            _ptr(feats), _ptr(opac_c), _ptr(radii), n_threads,
        )
        ctx.save_for_backward(*inputs)
        ctx.meta = (dims, strides, lib, n_threads)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, feats, opac_c, radii

    @staticmethod
    def backward(ctx, v_m2, v_con, v_feats, v_opac, _v_radii):
        means, quats, scales, opacities, colors, viewmats, Ks = ctx.saved_tensors
        dims, strides, lib, n_threads = ctx.meta
        grads = [torch.zeros_like(t) for t in (means, quats, scales, opacities, colors)]
        outs = [None if v is None else v.to(means.dtype).contiguous() for v in (v_m2, v_con, v_feats, v_opac)]
        getattr(lib, f"ds4d_project_backward_{_sfx(means.dtype)}")(
            _ptr(dims), _ptr(strides), _ptr(means), _ptr(quats), _ptr(scales), _ptr(colors),
            _ptr(viewmats), _ptr(Ks), *[_ptr(v) for v in outs], *[_ptr(g) for g in grads], n_threads,
        )
        return (*grads, None, None, None, None, None, None, None)


def _load_ext(use_ext: Optional[bool], dtype: torch.dtype, device: torch.device):
    """The kernel library when this call should use it; raises if ``use_ext`` demands it."""
    lib = None
    if use_ext is not False and dtype in (torch.float32, torch.float64) and device.type == "cpu":
        lib = _build.load()
    if use_ext and lib is None:
        raise RuntimeError(f"C++ CPU rasterizer unavailable: {_build._error}")
    return lib


def fused_render(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                 viewmats: Tensor, Ks: Tensor, width: int, height: int, sh_degree: Optional[int],
                 use_ext: Optional[bool] = None):
    """Projection, colours, sort, binning and compositing in the C++ kernel.

    Returns (features [C,H,W,4] = rgb + depth without background, alpha [C,H,W,1], means2d,
    conics, depths, radii), or None when the kernel cannot serve this call (pure-torch request,
    no kernel, gradients wanted for the cameras, SH degree > 3, ...): the caller then takes the
    general path. Inputs are [N,...] (shared by every camera) or [C,N,...] as in ``render``.
    """
    dtype = means.dtype
    if use_ext is False or means.device.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return None
    if sh_degree is not None and not 0 <= sh_degree <= 3:
        return None
    if (viewmats.requires_grad or Ks.requires_grad) and torch.is_grad_enabled():
        return None  # camera gradients: the torch projection differentiates those
    C, N = viewmats.shape[0], means.shape[-2]
    if C * N >= 2**31 - 1:
        return None
    lib = _load_ext(use_ext, dtype, means.device)
    if lib is None:
        return None
    if sh_degree is not None and (sh_degree + 1) ** 2 > colors.shape[-2]:
        raise ValueError(f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} coefficients, got {colors.shape[-2]}")
    cast = [t if t.dtype == dtype else t.to(dtype) for t in (quats, scales, opacities, colors, viewmats, Ks)]
    n_threads = kernel_threads()
    with one_thread():
        means2d, conics, feats, opac_c, radii = _ExtProject.apply(
            means, *cast, width, height, sh_degree, lib, n_threads
        )
        depths = feats[..., 3]
        img, alpha = _ExtRasterize.apply(
            means2d, conics, feats, opac_c, depths.detach(), radii, width, height, lib, n_threads
        )
    return img, alpha, means2d, conics, depths, radii


# --------------------------------------------------------------------------- torch fallback
def bin_torch(means2d: Tensor, radii: Tensor, order: Tensor, width: int, height: int):
    """Tile lists in pure torch: (offsets [C*tiles+1], ids [n_isect] flat c*N+g in depth order)."""
    C, N = means2d.shape[:2]
    tx, ty = num_tiles(width, TILE), num_tiles(height, TILE)
    n_tiles = tx * ty
    m2 = means2d.detach().reshape(-1, 2)
    rad = radii.reshape(-1, 2).to(m2.dtype)
    x0 = torch.floor((m2[:, 0] - rad[:, 0]) / TILE).clamp(0, tx).long()
    x1 = torch.ceil((m2[:, 0] + rad[:, 0]) / TILE).clamp(0, tx).long()
    y0 = torch.floor((m2[:, 1] - rad[:, 1]) / TILE).clamp(0, ty).long()
    y1 = torch.ceil((m2[:, 1] + rad[:, 1]) / TILE).clamp(0, ty).long()
    visible = (radii.reshape(-1, 2) > 0).all(dim=-1)
    wr = (x1 - x0).clamp_min(0)
    counts = torch.where(visible, wr * (y1 - y0).clamp_min(0), torch.zeros_like(wr))
    total = int(counts.sum())
    flat = torch.repeat_interleave(torch.arange(C * N), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total) - first[flat]
    tile_x = x0[flat] + local % wr[flat]
    tile_y = y0[flat] + local // wr[flat]
    cam = flat // N
    tile = cam * n_tiles + tile_y * tx + tile_x
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N).expand(C, N).contiguous())
    key = tile * N + rank.reshape(-1)[flat]
    sorted_idx = torch.argsort(key)
    ids = flat[sorted_idx]
    offsets = torch.zeros(C * n_tiles + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=C * n_tiles), 0)
    return offsets, ids


def _tile_chunk(pix: Tensor, pad: Tensor, m2: Tensor, con: Tensor, op: Tensor, f: Tensor):
    """pix [B,P,2]; per-tile lists [B,K,...] front to back (pad marks empty slots)."""
    d = pix[:, :, None, :] - m2[:, None, :, :]
    dx, dy = d[..., 0], d[..., 1]
    sigma = (
        0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy)
        + con[:, None, :, 1] * dx * dy
    )
    usable = (~pad)[:, None, :] & (sigma >= 0)
    sigma = torch.where(usable, sigma, torch.full_like(sigma, 1e4))
    alpha = torch.clamp_max(op[:, None, :] * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where(usable & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        contributes = torch.cumprod(1.0 - alpha, dim=-1) > T_MIN
    alpha = alpha * contributes
    trans = torch.cumprod(1.0 - alpha, dim=-1)
    trans = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
    w = alpha * trans
    return torch.einsum("bpk,bkd->bpd", w, f), w.sum(dim=-1)


def composite_torch(means2d, conics, feats, opacities, radii, order, width, height):
    """Pure-torch tiled compositor (bucketed by tile load, chunked, checkpointed)."""
    C, N, D = feats.shape
    dtype, device = feats.dtype, feats.device
    tx, ty = num_tiles(width, TILE), num_tiles(height, TILE)
    n_tiles = tx * ty
    offsets, ids = bin_torch(means2d, radii, order, width, height)
    counts = offsets[1:] - offsets[:-1]
    m2f, conf = means2d.reshape(-1, 2), conics.reshape(-1, 3)
    opf, ff = opacities.reshape(-1), feats.reshape(-1, D)
    # Pixel coordinates and flat output indices of every tile slot (edge slots marked -1).
    ly, lx = torch.meshgrid(torch.arange(TILE), torch.arange(TILE), indexing="ij")
    lx, ly = lx.reshape(-1), ly.reshape(-1)
    use_ckpt = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, feats, opacities)
    )
    out_idx, out_img, out_alpha = [], [], []
    busy = torch.nonzero(counts > 0).flatten()
    if busy.numel():
        bucket = torch.ceil(torch.log2(counts[busy].to(torch.float64))).long()
        for b in torch.unique(bucket).tolist():
            tiles = busy[bucket == b]
            K = 1 << int(b)
            per_chunk = max(1, _CHUNK_ELEMS // (TILE * TILE * K))
            for s in range(0, tiles.numel(), per_chunk):
                tl = tiles[s : s + per_chunk]
                cam, t = tl // n_tiles, tl % n_tiles
                px = (t % tx)[:, None] * TILE + lx[None]
                py = (t // tx)[:, None] * TILE + ly[None]
                inside = (px < width) & (py < height)
                slot = offsets[tl][:, None] + torch.arange(K)[None]
                pad = slot >= offsets[tl + 1][:, None]
                g = ids[slot.clamp_max(max(ids.numel() - 1, 0))]
                pix = torch.stack([px, py], dim=-1).to(dtype) + 0.5
                args = (pix, pad, m2f[g], conf[g], opf[g], ff[g])
                img, alpha = (checkpoint(_tile_chunk, *args, use_reentrant=False)
                              if use_ckpt else _tile_chunk(*args))
                flat = (cam[:, None] * height + py) * width + px
                out_idx.append(flat[inside])
                out_img.append(img[inside])
                out_alpha.append(alpha[inside])
    img_full = torch.zeros(C * height * width, D, dtype=dtype, device=device)
    alpha_full = torch.zeros(C * height * width, dtype=dtype, device=device)
    if out_idx:
        idx = torch.cat(out_idx)
        img_full = img_full.index_copy(0, idx, torch.cat(out_img))
        alpha_full = alpha_full.index_copy(0, idx, torch.cat(out_alpha))
    return img_full.reshape(C, height, width, D), alpha_full.reshape(C, height, width, 1)


# --------------------------------------------------------------------------- entry point
def composite(
    means2d: Tensor,  # [C,N,2]
    conics: Tensor,  # [C,N,3]
    feats: Tensor,  # [C,N,D]
    opacities: Tensor,  # [C,N]
    depths: Tensor,  # [C,N]
    radii: Tensor,  # [C,N,2] int32
    width: int,
    height: int,
    use_ext: Optional[bool] = None,
) -> tuple[Tensor, Tensor]:
    """Accumulated features [C,H,W,D] (no background) and alpha [C,H,W,1].

    ``use_ext``: None = the C++ kernel when available, True = require it, False = pure torch.
    """
    dtype = feats.dtype
    conics, opacities = conics.to(dtype), opacities.to(dtype)
    means2d = means2d.to(dtype)
    radii = radii.to(torch.int32).contiguous()
    lib = _load_ext(use_ext, dtype, feats.device)
    if lib is not None and feats.shape[0] * feats.shape[1] >= 2**31 - 1:  # int32 ids in the kernel
        if use_ext:
            raise RuntimeError("C++ CPU rasterizer: cameras x Gaussians must stay below 2^31")
        lib = None
    if lib is None:
        with one_thread():
            order = depth_order(depths, radii)
        # single-threaded like the rest of the torch side (see .serial): under load the OpenMP
        # pool made this path 2-10x slower than one thread
        return run_serial(
            lambda m, c, f, o: composite_torch(m, c, f, o, radii, order, width, height),
            means2d, conics, feats, opacities,
        )
    with one_thread():
        return _ExtRasterize.apply(
            means2d, conics, feats, opacities, depths.detach().to(dtype), radii, width, height, lib,
            kernel_threads(),
        )
