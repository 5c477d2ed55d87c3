"""Pure-torch stand-ins for the gsplat 1.5.3 CUDA kernels behind the ``cuda`` backend (CPU tests).

Why: the ``cuda`` backend (:mod:`.cuda`) cannot run without a GPU, yet its glue -- what it hands
gsplat and what it does with the results -- decides whether a CUDA fit is right. Here the
compiled kernels are replaced by torch functions with the same contracts, so that glue runs on
CPU tensors and can be compared with the CPU backend, gradients included.

Where the seam is: gsplat's Python wrappers (``isect_tiles``, ``isect_offset_encode``,
``rasterize_to_pixels`` and its ``_RasterizeToPixels`` autograd Function) reach the compiled
library only through ``gsplat.cuda._wrapper._make_lazy_cuda_func(name)``. :func:`emulated_gsplat_cuda`
replaces that lookup, so the wrapper code that runs on a GPU -- argument checks, ``.contiguous()``
calls, channel padding, the autograd Function and its background gradient -- runs here unchanged
and only the four kernels it calls are stand-ins. A kernel name the stand-ins do not know fails
loudly (KeyError), so a new call in the glue cannot slip past unemulated.

The contracts were written from gsplat 1.5.3's C++ entry points (``csrc/Intersect.cpp``,
``csrc/Rasterization.cpp``), its kernels (``IntersectTile.cu``, ``RasterizeToPixels3DGSFwd.cu``)
and its pure-torch reference (``cuda/_torch_impl.py``: ``_isect_tiles``, ``_isect_offset_encode``):

- ``intersect_tile(means2d, radii, depths, image_ids, gaussian_ids, I, tile_size, tile_width,
  tile_height, sort, segmented)`` -> ``(tiles_per_gauss int32 [..., N], isect_ids int64 [n],
  flatten_ids int32 [n])``; packed when ``means2d`` is [nnz, 2] (then ``image_ids`` int64 [nnz]).
  An id is ``image | tile | float32 bits of the depth`` (image and tile ids in the high 32 bits);
  a Gaussian with a radius <= 0 on either axis covers no tile; the sort is stable.
- ``intersect_offset(isect_ids, I, tile_width, tile_height)`` -> int32 [I, tile_height, tile_width],
  the index of each tile's first intersection (empty tiles: where the next one starts).
- ``rasterize_to_pixels_3dgs_fwd(means2d, conics, colors, opacities, backgrounds, masks, width,
  height, tile_size, tile_offsets, flatten_ids)`` -> ``(colors [..., H, W, D], alphas [..., H, W, 1],
  last_ids int32 [..., H, W])``: float32 only, D in gsplat's supported channel counts; per tile,
  front to back in ``flatten_ids`` order, alpha = min(0.999, o exp(-sigma)) skipped when sigma < 0
  or alpha < 1/255, stopping before the Gaussian that would bring transmittance to <= 1e-4;
  pixel centres at +0.5; ``alphas`` = 1 - final transmittance; ``backgrounds`` added times it.
- ``rasterize_to_pixels_3dgs_bwd(..., render_alphas, last_ids, v_colors, v_alphas, absgrad)`` ->
  ``(v_means2d_abs or None, v_means2d, v_conics, v_colors, v_opacities)``: here the exact gradient
  of the forward above, by autograd over a recomputation.

Not emulated (the glue uses none of them; each raises NotImplementedError): tile ``masks`` and
``absgrad``. Arithmetic is float32 like the kernels, but ``__expf`` and summation order differ,
so results agree with a GPU to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from .serial import one_thread

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
# channel counts the compiled rasterizer is instantiated for (csrc/Rasterization.cpp)
SUPPORTED_CHANNELS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)
_CHUNK = 1 << 22  # pixel x Gaussian pairs per compositing chunk

#: how often each stand-in ran since the last :func:`emulated_gsplat_cuda` began (tests assert on it)
calls: Counter = Counter()


def _check_input(t: Tensor, name: str, dtype: Optional[torch.dtype] = None) -> None:
    """CHECK_INPUT (contiguous; the CUDA check is what we waive) and the kernel's data_ptr<T> type."""
    if not t.is_contiguous():
        raise RuntimeError(f"{name} must be contiguous")
    if dtype is not None and t.dtype != dtype:
        raise RuntimeError(f"expected scalar type {dtype} for {name} but found {t.dtype}")


def _bits(n: int) -> int:
    """floor(log2(n)) + 1, as the kernels count the bits of an image or tile id."""
    return int(n).bit_length()


# ------------------------------------------------------------------------------ intersection
def intersect_tile(means2d: Tensor, radii: Tensor, depths: Tensor, image_ids: Optional[Tensor],
                   gaussian_ids: Optional[Tensor], I: int, tile_size: int, tile_width: int,
                   tile_height: int, sort: bool, segmented: bool) -> tuple[Tensor, Tensor, Tensor]:
    calls["intersect_tile"] += 1
    if means2d.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"intersect_tile dispatches on float or double, got {means2d.dtype}")
    _check_input(means2d, "means2d")
    _check_input(radii, "radii", torch.int32)
    _check_input(depths, "depths", means2d.dtype)
    packed = means2d.dim() == 2
    n = means2d.numel() // 2
    if packed:
        if image_ids is None or gaussian_ids is None:
            raise RuntimeError("When packed is set, image_ids and gaussian_ids must be provided.")
        _check_input(image_ids, "image_ids", torch.int64)
        _check_input(gaussian_ids, "gaussian_ids", torch.int64)
        image_of = image_ids.reshape(-1)
    else:
        N = means2d.shape[-2]
        image_of = torch.arange(n, device=means2d.device) // max(N, 1)
    tile_n_bits = _bits(tile_width * tile_height)
    if _bits(I) + tile_n_bits > 32:
        raise RuntimeError("image and tile ids need more than 32 bits")

    # the kernel's float32 arithmetic; a negative float cast to uint32 saturates at 0 on CUDA
    m = means2d.reshape(n, 2).float()
    r = radii.reshape(n, 2).float()
    ts = float(tile_size)
    tx, ty, rx, ry = m[:, 0] / ts, m[:, 1] / ts, r[:, 0] / ts, r[:, 1] / ts
    x0 = torch.floor(tx - rx).clamp(0, tile_width).long()
    y0 = torch.floor(ty - ry).clamp(0, tile_height).long()
    x1 = torch.ceil(tx + rx).clamp(0, tile_width).long()
    y1 = torch.ceil(ty + ry).clamp(0, tile_height).long()
    visible = (r > 0).all(dim=-1)
    width = x1 - x0
    counts = torch.where(visible, (y1 - y0) * width, torch.zeros_like(width))
    tiles_per_gauss = counts.to(torch.int32).reshape(depths.shape)

    total = int(counts.sum())
    idx = torch.repeat_interleave(torch.arange(n, device=means2d.device), counts)
    local = torch.arange(total, device=means2d.device) - (torch.cumsum(counts, 0) - counts)[idx]
    tile_id = (y0[idx] + local // width[idx].clamp_min(1)) * tile_width + x0[idx] + local % width[idx].clamp_min(1)
    # depth key: the 32 bits of the float reinterpreted, zero-extended (a double's low word)
    flat_depths = depths.reshape(-1)
    words = flat_depths.view(torch.int32) if flat_depths.dtype == torch.float32 else \
        flat_depths.view(torch.int32).reshape(-1, 2)[:, 0]
    depth_key = words.to(torch.int64) & 0xFFFFFFFF
    isect_ids = (image_of[idx].to(torch.int64) << (32 + tile_n_bits)) | (tile_id << 32) | depth_key[idx]
    flatten_ids = idx.to(torch.int32)
    if sort and total:
        # a segmented sort per image gives the same order: the image id is the top field
        isect_ids, order = torch.sort(isect_ids, stable=True)
        flatten_ids = flatten_ids[order]
    return tiles_per_gauss, isect_ids, flatten_ids


def intersect_offset(isect_ids: Tensor, I: int, tile_width: int, tile_height: int) -> Tensor:
    calls["intersect_offset"] += 1
    _check_input(isect_ids, "isect_ids", torch.int64)
    n_tiles = tile_width * tile_height
    if isect_ids.numel() == 0:
        return torch.zeros(I, tile_height, tile_width, dtype=torch.int32, device=isect_ids.device)
    key = isect_ids >> 32
    tile_n_bits = _bits(n_tiles)
    flat = (key >> tile_n_bits) * n_tiles + (key & ((1 << tile_n_bits) - 1))
    counts = torch.bincount(flat, minlength=I * n_tiles)
    offsets = torch.cumsum(counts, 0) - counts  # first intersection of each (sorted) tile
    return offsets.to(torch.int32).reshape(I, tile_height, tile_width)


# ------------------------------------------------------------------------------ rasterization
def _composite(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor,
               backgrounds: Optional[Tensor], width: int, height: int, tile_size: int,
               tile_offsets: Tensor, flatten_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The forward kernel's maths in torch (differentiable): colors, alphas, last_ids."""
    image_dims = tuple(tile_offsets.shape[:-2])
    I = math.prod(image_dims)
    th, tw = tile_offsets.shape[-2:]
    n_tiles = th * tw
    D = colors.shape[-1]
    dev, dtype = colors.device, colors.dtype
    m2, con = means2d.reshape(-1, 2), conics.reshape(-1, 3)
    col, op = colors.reshape(-1, D), opacities.reshape(-1)
    n_isects = flatten_ids.numel()
    starts = tile_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], torch.tensor([n_isects], device=dev)])
    ly, lx = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
    lx, ly = lx.reshape(-1), ly.reshape(-1)

    out_img = torch.zeros(I * height * width, D, dtype=dtype, device=dev)
    out_T = torch.ones(I * height * width, dtype=dtype, device=dev)
    out_last = torch.zeros(I * height * width, dtype=torch.int32, device=dev)
    busy = torch.nonzero(ends > starts).flatten()
    if busy.numel():
        K_all = (ends - starts)[busy]
        per_tile = tile_size * tile_size
        s = 0
        while s < busy.numel():
            # a run of tiles whose padded lists fit one chunk
            e = s + 1
            K = int(K_all[s])
            while e < busy.numel() and (e - s + 1) * per_tile * max(K, int(K_all[e])) <= _CHUNK:
                K = max(K, int(K_all[e]))
                e += 1
            tiles = busy[s:e]
            s = e
            img_id, t = tiles // n_tiles, tiles % n_tiles
            px = (t % tw)[:, None] * tile_size + lx[None]
            py = (t // tw)[:, None] * tile_size + ly[None]
            slot = starts[tiles][:, None] + torch.arange(K, device=dev)[None]
            pad = slot >= ends[tiles][:, None]
            g = flatten_ids[slot.clamp_max(n_isects - 1)].long()
            dx = px.to(dtype)[:, :, None] + 0.5 - m2[g][:, None, :, 0]
            dy = py.to(dtype)[:, :, None] + 0.5 - m2[g][:, None, :, 1]
            c = con[g][:, None]
            sigma = 0.5 * (c[..., 0] * dx * dx + c[..., 2] * dy * dy) + c[..., 1] * dx * dy
            alpha = torch.clamp_max(op[g][:, None, :] * torch.exp(-sigma), ALPHA_MAX)
            used = (~pad)[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            alpha = torch.where(used, alpha, torch.zeros_like(alpha))
            with torch.no_grad():  # stop before the Gaussian that would leave T <= 1e-4 (exclusive)
                keep = torch.cumprod(1.0 - alpha, dim=-1) > T_MIN
            alpha = alpha * keep
            T_after = torch.cumprod(1.0 - alpha, dim=-1)
            T_before = torch.cat([torch.ones_like(T_after[..., :1]), T_after[..., :-1]], dim=-1)
            img = torch.einsum("tpk,tkd->tpd", alpha * T_before, col[g])
            with torch.no_grad():
                contrib = used & keep
                last = torch.where(contrib, slot[:, None, :].expand_as(contrib), torch.full_like(slot[:, None, :], -1).expand_as(contrib))
                last = last.max(dim=-1).values.clamp_min(0).to(torch.int32)
            inside = (px < width) & (py < height)
            flat = (img_id[:, None] * height + py) * width + px
            out_img = out_img.index_copy(0, flat[inside], img[inside])
            out_T = out_T.index_copy(0, flat[inside], T_after[..., -1][inside])
            out_last[flat[inside]] = last[inside]
    render = out_img.reshape(image_dims + (height, width, D))
    T = out_T.reshape(image_dims + (height, width, 1))
    if backgrounds is not None:
        render = render + T * backgrounds[..., None, None, :]
    return render, 1.0 - T, out_last.reshape(image_dims + (height, width))


def _check_raster_inputs(means2d, conics, colors, opacities, backgrounds, masks, tile_offsets, flatten_ids):
    for t, name in ((means2d, "means2d"), (conics, "conics"), (colors, "colors"), (opacities, "opacities")):
        _check_input(t, name, torch.float32)  # data_ptr<float>(): the rasterizer is float32 only
    _check_input(tile_offsets, "tile_offsets", torch.int32)
    _check_input(flatten_ids, "flatten_ids", torch.int32)
    if backgrounds is not None:
        _check_input(backgrounds, "backgrounds", torch.float32)
    if masks is not None:
        raise NotImplementedError("tile masks are not emulated (ds4d's cuda backend passes none)")
    if colors.shape[-1] not in SUPPORTED_CHANNELS:
        raise RuntimeError(f"Unsupported number of channels: {colors.shape[-1]}")


def rasterize_to_pixels_3dgs_fwd(means2d, conics, colors, opacities, backgrounds, masks, image_width,
                                 image_height, tile_size, tile_offsets, flatten_ids):
    calls["rasterize_to_pixels_3dgs_fwd"] += 1
    _check_raster_inputs(means2d, conics, colors, opacities, backgrounds, masks, tile_offsets, flatten_ids)
    with torch.no_grad(), one_thread():
        return _composite(means2d, conics, colors, opacities, backgrounds, int(image_width), int(image_height),
                          int(tile_size), tile_offsets, flatten_ids)


def rasterize_to_pixels_3dgs_bwd(means2d, conics, colors, opacities, backgrounds, masks, image_width,
                                 image_height, tile_size, tile_offsets, flatten_ids, render_alphas, last_ids,
                                 v_render_colors, v_render_alphas, absgrad):
    calls["rasterize_to_pixels_3dgs_bwd"] += 1
    _check_raster_inputs(means2d, conics, colors, opacities, backgrounds, masks, tile_offsets, flatten_ids)
    for t, name in ((render_alphas, "render_alphas"), (v_render_colors, "v_render_colors"),
                    (v_render_alphas, "v_render_alphas")):
        _check_input(t, name, torch.float32)
    _check_input(last_ids, "last_ids", torch.int32)
    if absgrad:
        raise NotImplementedError("absgrad is not emulated (ds4d's cuda backend does not ask for it)")
    leaves = [t.detach().requires_grad_(True) for t in (means2d, conics, colors, opacities)]
    with torch.enable_grad(), one_thread():
        img, alpha, _ = _composite(*leaves, backgrounds, int(image_width), int(image_height), int(tile_size),
                                   tile_offsets, flatten_ids)
        pairs = [(o, v) for o, v in ((img, v_render_colors), (alpha, v_render_alphas)) if o.requires_grad]
        grads = (torch.autograd.grad([o for o, _ in pairs], leaves, [v for _, v in pairs], allow_unused=True)
                 if pairs else [None] * 4)  # no intersections: nothing depends on the Gaussians
    v_means2d, v_conics, v_colors, v_opacities = (
        torch.zeros_like(x) if g is None else g.contiguous() for g, x in zip(grads, leaves))
    return None, v_means2d, v_conics, v_colors, v_opacities


KERNELS: dict[str, Callable] = {
    "intersect_tile": intersect_tile,
    "intersect_offset": intersect_offset,
    "rasterize_to_pixels_3dgs_fwd": rasterize_to_pixels_3dgs_fwd,
    "rasterize_to_pixels_3dgs_bwd": rasterize_to_pixels_3dgs_bwd,
}


def _lookup(name: str) -> Callable:
    if name not in KERNELS:
        raise KeyError(f"gsplat CUDA kernel {name!r} has no pure-torch stand-in in ds4d_cli.render.testing")
    return KERNELS[name]


@contextlib.contextmanager
def emulated_gsplat_cuda() -> Iterator[Counter]:
    """Within: gsplat's CUDA kernels are the stand-ins above and ``render(..., backend="cuda")``
    accepts CPU tensors (only the "is CUDA available" gate is lifted). Yields :data:`calls`."""
    from gsplat.cuda import _wrapper

    import ds4d_cli.render as render_pkg

    original_lookup = _wrapper._make_lazy_cuda_func
    original_resolve = render_pkg.resolve_backend

    def resolve(backend: str, device: torch.device) -> str:
        return "cuda" if backend == "cuda" else original_resolve(backend, device)

    calls.clear()
    _wrapper._make_lazy_cuda_func = _lookup
    render_pkg.resolve_backend = resolve
    try:
        yield calls
    finally:
        _wrapper._make_lazy_cuda_func = original_lookup
        render_pkg.resolve_backend = original_resolve
