"""Salient-object segmentation with rembg's ONNX models, strictly offline.

rembg downloads a missing model on first use; here that would hang or fail without network, so
the model file is looked up first (in the same folders rembg searches) and the session is built
from a subclass whose ``download_models`` just returns that file: rembg can never fetch anything.
``import rembg`` is slow (numba compiles pymatting on a fresh machine, ~1 min), so it happens only
when a rembg segmenter actually runs.

Small models such as u2netp are unstable on cluttered backgrounds: a frame's mask can collapse or
jump to a background blob depending on how the object is framed. We therefore average the soft
masks of several views of each frame (the full frame and two centred zooms, each also mirrored),
which is the classic test-time augmentation for saliency models, and threshold the average at a
lower level than 0.5 because a part missed by one view is usually found by the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ds4d_cli.errors import MissingWeightsError

#: Models we accept, with the file rembg expects and where a user with network gets it.
MODELS: dict[str, str] = {
    "u2netp": "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2netp.onnx",
    "u2net": "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx",
    "isnet-general-use": "https://github.com/danielgatis/rembg/releases/download/v0.0.0/isnet-general-use.onnx",
    "birefnet-general": "https://github.com/danielgatis/rembg/releases/download/v0.0.0/BiRefNet-general-epoch_244.onnx",
    "bria-rmbg": "https://github.com/danielgatis/rembg/releases/download/v0.0.0/bria-rmbg-2.0.onnx",
}
#: Heavy models (1024 px inputs) run once per frame; the small ones get the averaged views.
SINGLE_VIEW = {"birefnet-general", "bria-rmbg"}
#: Centred zooms (fraction of the frame's width and height) averaged per frame, each also mirrored.
ZOOMS = (1.0, 0.85, 0.7)
#: The averaged soft mask counts as object from here (see the module docstring).
THRESHOLD = 0.3


def legacy_home() -> Path:
    """rembg's flat model folder: $U2NET_HOME, else $XDG_DATA_HOME/.u2net or ~/.u2net."""
    env = os.environ.get("U2NET_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME", "~"), ".u2net").expanduser()


def model_dirs(name: str) -> list[Path]:
    """Folders rembg 2.0.86 searches for ``<name>.onnx``, in its order, then ~/.u2net.

    ~/.u2net (where `make setup` puts u2netp) is searched last even when $XDG_DATA_HOME moves
    rembg's own default elsewhere; the session is given the file we found, so that is safe.
    """
    if os.environ.get("U2NET_HOME"):
        home = legacy_home()
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        home = Path(os.environ.get("REMBG_HOME", os.path.join(xdg, "rembg") if xdg else "~/.rembg")).expanduser()
    dirs = [home / "models" / name, legacy_home(), Path("~/.u2net").expanduser()]
    return list(dict.fromkeys(dirs))


def model_path(name: str) -> Path | None:
    """The model's .onnx file if present (never downloads)."""
    for folder in model_dirs(name):
        candidate = folder / f"{name}.onnx"
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    return None


def available_models() -> list[str]:
    """rembg models present on this machine (for `ds4d doctor`)."""
    return [m for m in MODELS if model_path(m) is not None]


def require_model(name: str) -> Path:
    """Path of the model's weights, or a :class:`MissingWeightsError` telling how to get them."""
    if name not in MODELS:
        raise MissingWeightsError(
            f"unknown segmentation model {name!r}", hint=f"choose one of {', '.join(MODELS)} or static-bg"
        )
    path = model_path(name)
    if path is not None:
        return path
    where = legacy_home() / f"{name}.onnx"
    if name == "u2netp":
        hint = f"run `make setup` (installs u2netp offline into {legacy_home()}), or use --segmenter static-bg"
    else:
        hint = f"download {MODELS[name]} on a machine with network and save it as {where}; or use --segmenter u2netp"
    raise MissingWeightsError(f"segmentation weights for {name} not found", hint=hint)


def _offline_session(name: str, weights: Path) -> object:
    """A rembg session for ``name`` whose download step is replaced by the local file."""
    from rembg.sessions import sessions_class  # slow first import (numba)

    import onnxruntime as ort

    base = next(cls for cls in sessions_class if cls.name() == name)
    local = type(f"Offline{base.__name__}", (base,), {"download_models": classmethod(lambda cls, *a, **k: str(weights))})
    opts = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        opts.intra_op_num_threads = int(threads)
    return local(name, opts, providers=["CPUExecutionProvider"])


def _windows(w: int, h: int, zooms: Sequence[float]) -> list[tuple[int, int, int, int]]:
    """Centred (x0, y0, x1, y1) windows, one per zoom."""
    out = []
    for z in zooms:
        cw, ch = max(8, int(round(w * z))), max(8, int(round(h * z)))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        out.append((x0, y0, x0 + cw, y0 + ch))
    return out


#: rembg models whose preprocessing (320 px, ImageNet mean/std after dividing by the image's max)
#: we reproduce, so that they run batched straight on onnxruntime (no rembg import at all).
DIRECT = {"u2netp", "u2net"}
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: Views run in one onnxruntime call at most (peak memory grows ~270 MB per view for u2netp).
MAX_BATCH = 2


class U2netOnnx:
    """u2net/u2netp on onnxruntime with a free batch dimension: many views, one call."""

    def __init__(self, weights: Path) -> None:
        import onnxruntime as ort

        from ds4d_cli.segment.onnx_batch import free_batch_dim

        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = False  # the arena keeps the largest batch's buffers for good
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(free_batch_dim(weights.read_bytes()), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.side = 320

    def _tensor(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        im = np.asarray(Image.fromarray(rgb).resize((self.side, self.side), Image.Resampling.LANCZOS), np.float32)
        im = im / max(float(im.max()), 1e-6)
        return ((im - _MEAN) / _STD).transpose(2, 0, 1)

    def predict(self, views: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Soft saliency (float32, min-max normalised like rembg) for each RGB view, at its own size."""
        from PIL import Image

        out: list[np.ndarray] = []
        for b0 in range(0, len(views), MAX_BATCH):
            chunk = views[b0 : b0 + MAX_BATCH]
            batch = np.stack([self._tensor(v) for v in chunk]).astype(np.float32)
            pred = self.session.run(None, {self.input_name: batch})[0][:, 0]
            for p, view in zip(pred, chunk):
                lo, hi = float(p.min()), float(p.max())
                p = (p - lo) / (hi - lo) if hi - lo > 1e-6 else np.zeros_like(p)
                h, w = view.shape[:2]
                im = Image.fromarray(p.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
                out.append(np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0))
        return out


class _RembgPredictor:
    """Any rembg model through its own session, one view per call."""

    def __init__(self, session: object) -> None:
        self.session = session

    def predict(self, views: Sequence[np.ndarray]) -> list[np.ndarray]:
        from PIL import Image

        out = []
        for rgb in views:
            # rembg min-max normalises each prediction: a flat frame divides 0 by 0 (NaN -> 0 here).
            with np.errstate(all="ignore"):
                mask = self.session.predict(Image.fromarray(rgb))[0]  # type: ignore[attr-defined]
            out.append(np.nan_to_num(np.asarray(mask, dtype=np.float32) / 255.0))
        return out


@dataclass
class RembgSegmenter:
    """Soft masks from one rembg model; construct with :func:`load_rembg`."""

    name: str
    predictor: object
    zooms: tuple[float, ...] = ZOOMS

    def soft_mask(self, rgb: np.ndarray) -> np.ndarray:
        """Average soft mask over the views of one frame (float32 HxW in [0, 1]), views in one call."""
        h, w = rgb.shape[:2]
        if not self.zooms:
            return self.predictor.predict([rgb])[0]  # type: ignore[attr-defined]
        views, where = [], []
        for x0, y0, x1, y1 in _windows(w, h, self.zooms):
            crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            views += [crop, np.ascontiguousarray(crop[:, ::-1])]
            where += [(x0, y0, x1, y1, False), (x0, y0, x1, y1, True)]
        total = np.zeros((h, w), np.float32)
        count = np.zeros((h, w), np.float32)
        for pred, (x0, y0, x1, y1, mirrored) in zip(self.predictor.predict(views), where):  # type: ignore[attr-defined]
            total[y0:y1, x0:x1] += pred[:, ::-1] if mirrored else pred
            count[y0:y1, x0:x1] += 1.0
        mean = total / np.maximum(count, 1.0)
        # Map the averaged score so that THRESHOLD lands on alpha 0.5, with a soft ramp around it.
        return np.clip((mean - THRESHOLD) / (2 * 0.15) + 0.5, 0.0, 1.0).astype(np.float32)

    def segment(self, frames: Sequence[np.ndarray], on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
        out = []
        for frame in frames:
            out.append(self.soft_mask(np.ascontiguousarray(frame[..., :3])))
            if on_frame is not None:
                on_frame()
        return out


def load_rembg(name: str) -> RembgSegmenter:
    """Check the weights exist, then build the offline predictor (rembg imported only if needed)."""
    weights = require_model(name)
    if name in DIRECT:
        return RembgSegmenter(name, U2netOnnx(weights))
    zooms = () if name in SINGLE_VIEW else ZOOMS
    return RembgSegmenter(name, _RembgPredictor(_offline_session(name, weights)), zooms)
