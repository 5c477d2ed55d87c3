"""``ds4d eval --gt DIR``: score the fitted model against ground-truth views with known cameras.

DIR has the layout of ``shared/examples/<case>/``: ``cameras.json`` (shared ``intrinsics``, per
view ``camera_to_world`` in ds4d's convention, ``frame_times``), ``gt/<view>/NNN.png`` and the
``input`` view as ``input/NNN.png``. A fit made with ``--prior import DIR`` lives in DIR's world,
so the model is rendered at exactly those cameras -- no alignment step.

Frames are matched by normalised time: each fitted frame is compared with the ground-truth frame
nearest in time. Images are RGBA and composited over ``background`` (the render too), so pixels
outside the object compare equal only where the model is empty there.

Figures per view: PSNR and SSIM (mean over frames), and masked PSNR: the squared error pooled
over the view's *moving* pixels (ground truth changes over the clip) of all frames. Overall and
per role (``train`` = views the fit saw, ``held-out`` = the others): PSNR/SSIM are means over
views, masked PSNR pools the error over all their moving pixels.

Moving sharpness: sqrt(gradient energy of the render / that of the ground truth) over the same
moving pixels, pooled the same way. PSNR rewards a blurred average of a fast part; this ratio
shows it: 1 = as sharp as the truth, well below 1 = smeared, above 1 = noisier than the truth.

Shape figures per view: ``iou``, the silhouette IoU (rendered alpha > 0.5 against ground-truth
alpha > 0.5), mean over frames; ``near_debris``, the worst frame's share of image pixels covered
(alpha > 0.5) at an expected depth (accumulated depth / alpha) nearer the camera than the object
can be -- the depth of the object's bounding sphere's centre minus its radius, the sphere holding
the visual hull of every ground-truth view in DIR over the whole clip (:mod:`ds4d_cli.bounds`),
so a model whose splats all lie on the object scores 0; ``near_debris_frames``, how many frames
have any such pixel. Per role: means over views.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ds4d_cli import metrics
from ds4d_cli.errors import Ds4dError
from ds4d_cli.fsutil import read_json
from ds4d_cli.report import progress, warn
from ds4d_cli.workspace import Workspace

INPUT_VIEW = "input"


@dataclass
class EvalOptions:
    gt: str  # folder with cameras.json, gt/<view>/NNN.png and input/NNN.png
    views: Optional[list[str]] = None  # None = every view in cameras.json that has images
    background: str = "white"  # white | black | gray | #rrggbb, for both renders and ground truth


@dataclass
class GtView:
    name: str
    viewmat: torch.Tensor  # [4,4]
    K: torch.Tensor  # [3,3]
    width: int
    height: int
    files: list[Path]  # one per ground-truth frame


def _view_dir(root: Path, name: str) -> Path:
    """input/ for the input view; gt/<view>/, or <view>/ directly, as ``--prior import`` accepts."""
    if name == INPUT_VIEW:
        return root / "input"
    nested = root / "gt" / name
    return nested if nested.is_dir() or not (root / name).is_dir() else root / name


def load_gt(root: Path, views: Optional[list[str]] = None) -> tuple[list[GtView], list[float]]:
    """Cameras and image lists of a ground-truth folder; user errors for anything missing."""
    from ds4d_cli.cameras import c2w_to_viewmat

    cam_path = root / "cameras.json"
    if not cam_path.is_file():
        raise Ds4dError(f"no cameras.json in {root}", hint="--gt needs a folder laid out like shared/examples/<case>/")
    try:
        cams = read_json(cam_path)
        all_views: dict[str, Any] = cams["views"]
        intr = cams.get("intrinsics", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise Ds4dError(f"cannot read {cam_path}: {exc}", hint="it needs 'views' and 'intrinsics' as in shared/examples") from None
    available = [v for v in all_views if _view_dir(root, v).is_dir()]
    if views:
        unknown = [v for v in views if v not in available]
        if unknown:
            raise Ds4dError(f"view {unknown[0]!r} has no ground truth in {root}", hint=f"available views: {', '.join(available)}")
        chosen = list(views)
    else:
        chosen = available
    if not chosen:
        raise Ds4dError(f"no ground-truth images in {root}", hint="expected gt/<view>/000.png ... and/or input/000.png")
    out = []
    for name in chosen:
        spec = all_views[name]
        k = spec.get("K") or spec.get("intrinsics") or intr
        if isinstance(k, dict):
            K = torch.tensor([[k["fx"], 0.0, k["cx"]], [0.0, k["fy"], k["cy"]], [0.0, 0.0, 1.0]], dtype=torch.float32)
            width, height = int(k.get("width", cams.get("size", 0))), int(k.get("height", cams.get("size", 0)))
        else:
            K = torch.tensor(k, dtype=torch.float32)
            width, height = int(spec.get("width", cams.get("size"))), int(spec.get("height", cams.get("size")))
        files = sorted(_view_dir(root, name).glob("*.png"))
        if not files:
            raise Ds4dError(f"no PNG frames in {_view_dir(root, name)}", hint="expected 000.png, 001.png, ...")
        viewmat = c2w_to_viewmat(torch.tensor(spec["camera_to_world"], dtype=torch.float64)).float()
        out.append(GtView(name, viewmat, K, width, height, files))
    n = len(out[0].files)
    times = cams.get("frame_times") or [i / n for i in range(n)]
    if any(len(v.files) != len(times) for v in out):
        raise Ds4dError(f"views in {root} have different frame counts than cameras.json's frame_times",
                        hint="each gt/<view>/ needs one PNG per frame time")
    return out, [float(t) for t in times]


def match_frames(model_times: list[float], gt_times: list[float]) -> list[tuple[int, int]]:
    """(model frame, ground-truth frame) pairs: each model frame with the GT frame nearest in time."""
    gt = np.asarray(gt_times, dtype=np.float64)
    return [(i, int(np.argmin(np.abs(gt - t)))) for i, t in enumerate(model_times)]


def _load_rgba(path: Path, background: tuple[float, float, float], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB over ``background`` [H,W,3], alpha [H,W]) of a ground-truth image at ``size``."""
    img = Image.open(path).convert("RGBA")
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    bg = torch.tensor(background, dtype=torch.float32)
    return a[..., :3] * a[..., 3:] + bg * (1.0 - a[..., 3:]), a[..., 3]


def _load_rgb(path: Path, background: tuple[float, float, float], size: tuple[int, int]) -> torch.Tensor:
    return _load_rgba(path, background, size)[0]


def object_sphere(gt_views: list[GtView]):
    """Bounding sphere of the object from the ground-truth silhouettes of ``gt_views`` (union over
    time, at most 128 px): where the object can be (:mod:`ds4d_cli.bounds`)."""
    from ds4d_cli.bounds import sphere_from_silhouettes

    alphas, Ks = [], []
    for v in gt_views:
        scale = min(1.0, 128.0 / max(v.width, v.height))
        size = (max(1, round(v.width * scale)), max(1, round(v.height * scale)))
        alphas.append(torch.stack([_load_rgba(f, (1.0, 1.0, 1.0), size)[1] for f in v.files]).amax(0))
        K = v.K.clone()
        K[0] *= size[0] / v.width
        K[1] *= size[1] / v.height
        Ks.append(K)
    return sphere_from_silhouettes(alphas, torch.stack([v.viewmat for v in gt_views]), torch.stack(Ks))


def training_views(ws: Workspace) -> set[str] | None:
    """Names of the views the fit trained on (input + imported views); None if unknown."""
    path = ws.stage_dir("generate") / "cameras.json"
    if not path.is_file():
        return None
    try:
        cams = read_json(path)
        names = {INPUT_VIEW}
        if cams.get("prior") == "import":
            names |= {v.get("name") for v in cams.get("views", []) if v.get("name")}
        return names
    except (OSError, ValueError, AttributeError):
        return None


def _model_times(model: Any) -> list[float]:
    times = getattr(model, "frame_times", None)
    n = int(model.num_frames)
    if times is None:
        return [i / n for i in range(n)]
    return [float(t) for t in np.asarray(times, dtype=np.float64).reshape(-1)]


def evaluate_model(model: Any, gt_views: list[GtView], gt_times: list[float],
                   background: tuple[float, float, float], train: set[str] | None = None,
                   sphere: Any = None) -> dict[str, Any]:
    """Render ``model`` at every GT camera and frame; figures per view, per role and overall.

    ``sphere`` (a :class:`ds4d_cli.bounds.BoundingSphere`, default: from ``gt_views``'
    silhouettes) says where the object can be, for the near-plane debris figure.
    """
    if sphere is None:
        sphere = object_sphere(gt_views)
    pairs = match_frames(_model_times(model), gt_times)
    gap = max(abs(_model_times(model)[i] - gt_times[j]) for i, j in pairs)
    if len(gt_times) > 1 and gap > 0.5 / len(gt_times) + 1e-6:
        warn(f"fitted frames and ground truth differ by up to {gap:.3f} in normalised time; "
             "scores include that timing error (is --gt the clip the model was fitted to?)")
    # Group views by render size so one batched render call serves several cameras.
    groups: dict[tuple[int, int], list[int]] = {}
    for vi, v in enumerate(gt_views):
        groups.setdefault((v.width, v.height), []).append(vi)
    renders: list[list[torch.Tensor]] = [[] for _ in gt_views]
    gts: list[list[torch.Tensor]] = [[] for _ in gt_views]
    ious: list[list[float]] = [[] for _ in gt_views]
    debris: list[list[float]] = [[] for _ in gt_views]
    near = [sphere.near_limit(v.viewmat) if sphere is not None else None for v in gt_views]
    bg = torch.tensor(background, dtype=torch.float32)

    with progress("Evaluating", total=len(pairs), unit="frame") as bar:
        for mi, gj in pairs:
            for (w, h), idx in groups.items():
                vm = torch.stack([gt_views[k].viewmat for k in idx])
                Ks = torch.stack([gt_views[k].K for k in idx])
                with torch.no_grad():
                    out = model.render(mi, vm, Ks, w, h, bg)
                rgb = out.rgb.detach().float().cpu().clamp(0.0, 1.0)
                alpha = out.alpha.detach().float().cpu()[..., 0]
                depth = out.depth.detach().float().cpu()[..., 0] / alpha.clamp_min(1e-6)
                for c, k in enumerate(idx):
                    renders[k].append(rgb[c])
                    gt_rgb, gt_alpha = _load_rgba(gt_views[k].files[gj], background, (w, h))
                    gts[k].append(gt_rgb)
                    ious[k].append(float(metrics.silhouette_iou(alpha[c], gt_alpha)[0]))
                    if near[k] is not None:
                        debris[k].append(float(metrics.near_debris(alpha[c], depth[c], near[k])[0]))
            bar.advance(1)

    rows = []
    for k, v in enumerate(gt_views):
        pred, gt = torch.stack(renders[k]), torch.stack(gts[k])
        all_gt = torch.stack([_load_rgb(f, background, (v.width, v.height)) for f in v.files])
        mask = metrics.moving_mask(all_gt)
        sq, count = metrics.masked_mse(pred, gt, mask)
        ge_pred, _ = metrics.gradient_energy(pred, mask)
        ge_gt, _ = metrics.gradient_energy(gt, mask)
        role = "unknown" if train is None else ("train" if v.name in train else "held-out")
        rows.append({
            "view": v.name,
            "role": role,
            "frames": len(pairs),
            "psnr": float(metrics.psnr(pred, gt).mean()),
            "ssim": float(metrics.ssim(pred, gt).mean()),
            "masked_psnr": metrics.psnr_from_mse(sq / count) if count else None,
            "moving_sharpness": metrics.sharpness_ratio(ge_pred, ge_gt) if count else None,
            "moving_fraction": float(mask.float().mean()),
            "iou": float(np.mean(ious[k])),
            "near_debris": float(np.max(debris[k])) if debris[k] else None,
            "near_debris_frames": int(sum(d > 0 for d in debris[k])),
            "_sq": sq, "_count": count, "_ge_pred": ge_pred, "_ge_gt": ge_gt,
        })
    result = {
        "views": [{k: val for k, val in r.items() if not k.startswith("_")} for r in rows],
        "overall": _aggregate(rows),
        "max_time_gap": gap,
        "object_sphere": None if sphere is None else {"center": list(sphere.center), "radius": sphere.radius},
    }
    for role in ("train", "held-out"):
        sub = [r for r in rows if r["role"] == role]
        if sub:
            result[role.replace("-", "_")] = _aggregate(sub)
    return result


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sq = sum(r["_sq"] for r in rows)
    count = sum(r["_count"] for r in rows)
    return {
        "views": len(rows),
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "masked_psnr": metrics.psnr_from_mse(sq / count) if count else None,
        "moving_sharpness": metrics.sharpness_ratio(sum(r["_ge_pred"] for r in rows),
                                                    sum(r["_ge_gt"] for r in rows)) if count else None,
        "iou": float(np.mean([r["iou"] for r in rows])),
        "near_debris": _mean_or_none([r["near_debris"] for r in rows]),
    }


def _mean_or_none(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def run(ws: Workspace, opts: EvalOptions, model: Any = None) -> dict[str, Any]:
    """Evaluate the fitted model in ``ws`` against ``opts.gt``; a JSON-ready dict of figures."""
    from ds4d_cli.export.views import parse_background

    root = Path(opts.gt).expanduser()
    if not root.is_dir():
        raise Ds4dError(f"ground-truth folder {root} does not exist", hint="--gt needs a folder laid out like shared/examples/<case>/")
    background = parse_background(opts.background)
    gt_views, gt_times = load_gt(root, opts.views)
    if model is None:
        from ds4d_cli.fitted import load_fitted

        model = load_fitted(ws)
    # where the object can be: from every view DIR holds, not only the scored ones
    sphere = object_sphere(load_gt(root, None)[0])
    result = evaluate_model(model, gt_views, gt_times, background, training_views(ws), sphere)
    return {"gt": str(root.absolute()), "background": opts.background, **result}
