"""Rich tables the CLI prints: ``ds4d eval`` figures and ``ds4d status`` (stages return data only)."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table
from rich.text import Text


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def eval_table(results: dict[str, Any]) -> Table:
    """``evaluate.run``'s figures: one row per view, then the means per role and overall."""
    table = Table(title=f"ds4d eval vs {results.get('gt', '?')}",
                  caption="PSNR in dB. PSNR, SSIM: mean over frames. moving: share of pixels whose ground "
                          "truth changes over the clip; PSNR moving: error on those pixels only; sharp moving: "
                          "render's gradient / truth's on them (1 = as sharp, <1 = smeared). IoU: silhouettes (alpha > 0.5), "
                          "mean over frames. near debris: worst frame's share of pixels covered by splats nearer "
                          "the camera than the object can be")
    for col in ("view", "role", "frames", "PSNR", "SSIM", "PSNR moving", "sharp moving", "moving", "IoU",
                "near debris"):
        table.add_column(col, justify="left" if col in ("view", "role") else "right", no_wrap=True)
    for r in results["views"]:
        table.add_row(r["view"], r["role"], str(r["frames"]), _fmt(r["psnr"]), _fmt(r["ssim"], 4),
                      _fmt(r["masked_psnr"]), _fmt(r.get("moving_sharpness"), 3), f"{100 * r['moving_fraction']:.1f}%",
                      _fmt(r.get("iou"), 3), _pct(r.get("near_debris")))
    table.add_section()
    for key, label in (("train", "train"), ("held_out", "held-out"), ("overall", "all")):
        agg = results.get(key)
        if agg:
            table.add_row(Text(f"mean of {agg['views']}", style="bold"), Text(label, style="bold"), "",
                          _fmt(agg["psnr"]), _fmt(agg["ssim"], 4), _fmt(agg["masked_psnr"]), _fmt(agg.get("moving_sharpness"), 3), "",
                          _fmt(agg.get("iou"), 3), _pct(agg.get("near_debris")))
    return table


def status_table(ws: Any) -> Table:
    """Every stage of the workspace: done, stale (and why) or missing, its options and date."""
    from ds4d_cli.workspace import STAGES

    record = ws.source_record() or {}
    table = Table(title=f"workspace {ws.root}", caption=f"source: {record.get('source', '?')}")
    for column in ("stage", "state", "reason", "options", "finished"):
        table.add_column(column)
    colours = {"done": "green", "stale": "yellow", "missing": "red"}
    for stage in STAGES:
        st = ws.status(stage)
        manifest = st.manifest or {}
        options = ", ".join(f"{k}={v}" for k, v in (manifest.get("options") or {}).items() if v not in (None, False))
        table.add_row(stage, Text(st.state, style=colours[st.state]), st.reason, options[:80], manifest.get("created", ""))
    return table
