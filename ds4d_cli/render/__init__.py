"""Render 3D Gaussians: one entry point, three backends, one camera convention.

``render`` projects the Gaussians (EWA, :mod:`.projection`), evaluates colours (RGB or
spherical harmonics seen from each camera), composites front to back and returns rgb, alpha,
depth and the ``info`` dict that ``gsplat.strategy.DefaultStrategy`` reads. Cameras follow
:mod:`ds4d_cli.cameras` (OpenCV axes, world-to-camera ``viewmats`` [C,4,4], pixel ``Ks``).

Backends:
- ``cpu``: tiled compositor (16 px tiles, per-tile depth order). With the C++ kernel built
  (``python -m ds4d_cli.render.build``) the projection, colours, sort, binning and compositing
  all run in it (:func:`.cpu.fused_render`); pure torch otherwise.
- ``cuda``: gsplat's CUDA tile intersection and rasterizer (needs a GPU).
- ``dense``: every pixel x every Gaussian; the reference the others are tested against.
- ``auto``: ``cuda`` when CUDA is available and the tensors are on it, else ``cpu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from ds4d_cli.cameras import camera_centers

from . import dense
from .projection import project
from .serial import one_thread, run_serial

BACKENDS = ("auto", "cpu", "cuda", "dense")
# Variants of "cpu" that pin one implementation (tests, benchmark).
_CPU_VARIANTS = {"cpu": None, "cpu-ext": True, "cpu-torch": False}


@dataclass
class RenderOutput:
    rgb: Tensor  # [C,H,W,3] composited over the background
    alpha: Tensor  # [C,H,W,1]
    depth: Tensor  # [C,H,W,1] alpha-weighted accumulated camera z (divide by alpha for expected depth)
    info: dict = field(default_factory=dict)  # gsplat-compatible: means2d, radii, width, height, n_cameras, gaussian_ids, ...
    # The composited [C,H,W,4] that rgb (premultiplied, no background) and depth are views of, when
    # they are (CPU kernel, background None): a loss can take it whole instead of the rgb slice.
    features: Optional[Tensor] = None


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS and backend not in _CPU_VARIANTS:
        from ds4d_cli.errors import Ds4dError

        raise Ds4dError(f"unknown render backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if torch.cuda.is_available() and device.type == "cuda" else "cpu"
    if backend == "cuda" and not torch.cuda.is_available():
        from ds4d_cli.errors import Ds4dError

        raise Ds4dError("render backend 'cuda' requested but CUDA is not available", hint="use --backend cpu")
    return backend


def _per_camera(x: Tensor, C: int, base_dims: int) -> Tensor:
    """Expand a shared [N,...] tensor to [C,N,...] (free view); pass [C,N,...] through."""
    if x.dim() == base_dims:
        return x.unsqueeze(0).expand((C,) + tuple(x.shape))
    if x.dim() == base_dims + 1 and x.shape[0] == C:
        return x
    raise ValueError(f"expected a tensor with {base_dims} dims or [C={C},...], got {tuple(x.shape)}")


def evaluate_colors(
    colors: Tensor, means_c: Tensor, viewmats: Tensor, sh_degree: Optional[int]
) -> Tensor:
    """Per-camera RGB [C,N,3]; SH coefficients are evaluated toward each camera, as gsplat does."""
    C, N = means_c.shape[:2]
    if sh_degree is None:
        return _per_camera(colors, C, 2)
    from gsplat.cuda._torch_impl import _spherical_harmonics

    coeffs = _per_camera(colors, C, 3)
    if (sh_degree + 1) ** 2 > coeffs.shape[-2]:
        raise ValueError(f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} coefficients, got {coeffs.shape[-2]}")
    dirs = means_c - camera_centers(viewmats)[:, None, :]
    rgb = _spherical_harmonics(sh_degree, dirs, coeffs)
    return torch.clamp_min(rgb + 0.5, 0.0)


def render(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Optional[Tensor] = None,
    backend: str = "auto",
    sh_degree: Optional[int] = None,
) -> RenderOutput:
    """Render N Gaussians into C cameras.

    means [N,3] or [C,N,3] (one deformed copy per camera); quats [N,4]/[C,N,4] (wxyz, any
    norm); scales [N,3]/[C,N,3] activated std-devs; opacities [N]/[C,N] in [0,1]; colors RGB
    [N,3]/[C,N,3], or SH coefficients [N,K,3]/[C,N,K,3] when ``sh_degree`` is given.
    viewmats [C,4,4] world-to-camera; Ks [C,3,3]; background None (black), [3] or [C,3].
    Everything is differentiable, including ``info["means2d"]`` for densification.
    """
    C = viewmats.shape[0]
    width, height = int(width), int(height)
    means_c = _per_camera(means, C, 2)
    N = means_c.shape[1]
    if opacities.dim() >= 2 and opacities.shape[-1] == 1 and opacities.shape[-2] == N:
        opacities = opacities[..., 0]  # [N,1] / [C,N,1] as some callers keep them
    chosen = resolve_backend(backend, means_c.device)
    if chosen in _CPU_VARIANTS:
        from . import cpu

        # the common case: everything up to the image in the C++ kernel
        fused = cpu.fused_render(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                 sh_degree, use_ext=_CPU_VARIANTS[chosen])
        if fused is not None:
            img, alpha, means2d, conics, depths, radii = fused
            with one_thread():
                rgb, depth = _finish(img, alpha, background, C)
            return RenderOutput(rgb=rgb, alpha=alpha, depth=depth,
                                info=_info(means2d, radii, depths, conics, width, height, C, chosen),
                                features=img if background is None and img.shape[-1] == 4 else None)
    quats_c = quats if quats.dim() == 2 else _per_camera(quats, C, 2)
    scales_c = scales if scales.dim() == 2 else _per_camera(scales, C, 2)
    opac_c = _per_camera(opacities, C, 1)

    def prepare(means_c, quats_c, scales_c, opac_c, colors, viewmats, Ks):
        rgb_c = evaluate_colors(colors, means_c, viewmats, sh_degree)
        proj = project(means_c, quats_c, scales_c, opac_c, viewmats, Ks, width, height)
        feats = torch.cat([rgb_c, proj.depths[..., None]], dim=-1)  # depth composited as a channel
        return proj.means2d, proj.conics, feats, proj.depths, proj.radii, proj.valid

    # Small element-wise ops: single-threaded is far faster on a busy CPU (see .serial).
    prep = prepare if chosen == "cuda" else lambda *a: run_serial(prepare, *a)
    means2d, conics, feats, depths, radii, valid = prep(
        means_c, quats_c, scales_c, opac_c, colors, viewmats, Ks
    )

    if chosen == "dense":
        img, alpha = dense.composite(means2d, conics, feats, opac_c, depths, valid, width, height)
    elif chosen in _CPU_VARIANTS:
        from . import cpu

        img, alpha = cpu.composite(
            means2d, conics, feats, opac_c, depths, radii, width, height,
            use_ext=_CPU_VARIANTS[chosen],
        )
    else:
        from . import cuda

        img, alpha = cuda.composite(means2d, conics, feats, opac_c, depths, radii, width, height)

    extra = () if background is None else (background,)
    if chosen == "cuda":
        rgb, depth = _finish(img, alpha, background, C)
    else:
        rgb, depth = run_serial(lambda i, a, *bg: _finish(i, a, bg[0] if bg else None, C), img, alpha, *extra)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth,
                        info=_info(means2d, radii, depths, conics, width, height, C, chosen))


def _finish(img: Tensor, alpha: Tensor, background: Optional[Tensor], C: int) -> tuple[Tensor, Tensor]:
    """Split the composited features into rgb (over the background) and depth."""
    rgb = img[..., :3]
    if background is not None:
        b = background.to(rgb.dtype)
        b = b.reshape(1, 1, 1, 3) if b.dim() == 1 else b.reshape(C, 1, 1, 3)
        rgb = rgb + (1.0 - alpha) * b
    return rgb, img[..., 3:4]


def _info(means2d, radii, depths, conics, width, height, C, backend) -> dict[str, Any]:
    """The dict gsplat's DefaultStrategy reads (means2d's .grad feeds densification)."""
    return {
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "conics": conics,
        "width": width,
        "height": height,
        "n_cameras": C,
        "tile_size": 16,
        "gaussian_ids": None,
        "camera_ids": None,
        "backend": backend,
    }


def cpu_extension_status() -> tuple[bool, str]:
    """(usable, one line) about the C++ CPU kernel, for ``ds4d doctor``; builds it if needed."""
    from . import build

    lib = build.load()
    if lib is not None:
        return True, f"C++ kernel loaded ({build.library_path()})"
    return False, f"pure-torch fallback (C++ kernel unavailable: {build.load_error()})"


def render_gaussians(gaussians, viewmats: Tensor, Ks: Tensor, width: int, height: int, **kwargs) -> RenderOutput:
    """Convenience: render a :class:`ds4d_cli.gaussians.Gaussians` (SH when it has bands)."""
    deg = gaussians.sh_degree
    colors = gaussians.sh if deg > 0 else gaussians.colors
    return render(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, colors,
        viewmats, Ks, width, height, sh_degree=deg if deg > 0 else None, **kwargs,
    )
