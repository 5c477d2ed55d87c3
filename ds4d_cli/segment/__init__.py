"""Segmentation: turn RGB frames into soft object masks.

Two families share one interface (``segment(frames, on_frame) -> list of float32 HxW alphas``):
rembg salient-object models (u2netp works offline after ``make setup``; u2net, isnet-general-use,
birefnet-general and bria-rmbg when their weights are in rembg's model folder), ``static-bg``, a
weight-free background-difference segmenter for fixed cameras, and ``hybrid``: u2netp combined
with the clip's own static background and edge refinement. :func:`clean_alpha` then keeps the
object and drops specks and small holes, whichever segmenter ran.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from ds4d_cli.segment.cleanup import clean_alpha
from ds4d_cli.segment.rembg_seg import MODELS as REMBG_MODELS
from ds4d_cli.segment.rembg_seg import available_models, model_path, require_model

SEGMENTERS: tuple[str, ...] = ("hybrid", *REMBG_MODELS, "static-bg")
#: Segmenters that take a --background-plate.
PLATE_SEGMENTERS = ("hybrid", "static-bg")

__all__ = [
    "PLATE_SEGMENTERS",
    "SEGMENTERS",
    "Segmenter",
    "available_models",
    "clean_alpha",
    "make_segmenter",
    "model_path",
    "require_model",
]


class Segmenter(Protocol):
    name: str

    def segment(self, frames: Sequence[np.ndarray], on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
        """One soft alpha (float32 HxW in [0, 1]) per RGB(A) uint8 frame."""
        ...


def make_segmenter(name: str, background: str | None = None, source_size: tuple[int, int] | None = None) -> Segmenter:
    """Build a segmenter by name; rembg weights are checked before rembg is imported."""
    from ds4d_cli.errors import Ds4dError

    if name == "static-bg":
        from ds4d_cli.segment.static_bg import StaticBgSegmenter

        return StaticBgSegmenter(plate=background, source_size=source_size)
    if name == "hybrid":
        from ds4d_cli.segment.hybrid import HybridSegmenter
        from ds4d_cli.segment.rembg_seg import U2netOnnx, RembgSegmenter

        return HybridSegmenter(RembgSegmenter("u2netp", U2netOnnx(require_model("u2netp")), zooms=(1.0,)),
                               plate=background, source_size=source_size)
    if name not in REMBG_MODELS:
        raise Ds4dError(f"unknown segmenter {name!r}", hint=f"choose one of {', '.join(SEGMENTERS)}")
    if background is not None:
        raise Ds4dError("--background-plate only applies to --segmenter hybrid or static-bg",
                        hint="drop it, or add --segmenter hybrid")
    from ds4d_cli.segment.rembg_seg import load_rembg

    return load_rembg(name)
