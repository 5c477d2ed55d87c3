"""`ds4d doctor`: what this machine can do, and what to install for what it cannot."""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import dataclass

from rich.table import Table

from ds4d_cli import weights
from ds4d_cli.console import console

PRIOR_MODELS = tuple(w.repo_id for w in weights.ZERO123PP.values())
ENCODER_MODELS = (weights.DINOV2_SMALL.repo_id,)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def hub_model_present(repo_id: str) -> bool:
    """True when a hub model is in the local Hugging Face cache (no network is touched)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
        if not isinstance(found, str):
            found = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(found, str)
    except Exception:  # noqa: BLE001 — a broken cache simply means "not present"
        return False


def gather_checks() -> list[Check]:
    checks: list[Check] = []
    import torch

    cuda = torch.cuda.is_available()
    checks.append(Check("torch", True, f"{torch.__version__}, device {'cuda' if cuda else 'cpu'}, {torch.get_num_threads()} threads"))
    gsplat_ok = importlib.util.find_spec("gsplat") is not None
    if gsplat_ok:
        import gsplat

        detail = f"gsplat {gsplat.__version__}: " + ("CUDA kernels usable (compiled on first use)" if cuda else "no CUDA device, CPU backend used")
    else:
        detail = "gsplat not installed"
    checks.append(Check("rasterizer", gsplat_ok, detail, "" if gsplat_ok else "make setup"))
    try:
        from ds4d_cli.render import cpu_extension_status

        ext_ok, ext_detail = cpu_extension_status()
    except Exception as exc:  # noqa: BLE001
        ext_ok, ext_detail = False, f"unavailable ({exc})"
    checks.append(Check("cpu rasterizer", True, ext_detail, "" if ext_ok else "make setup builds the fast C++ kernel"))
    from ds4d_cli.segment.rembg_seg import available_models

    present = available_models()
    checks.append(
        Check(
            "segmentation",
            "u2netp" in present,
            f"{', '.join(present) or 'no rembg models'} (static-bg needs none)",
            "" if "u2netp" in present else "make setup installs u2netp offline",
        )
    )
    priors = [m for m in PRIOR_MODELS if hub_model_present(m)]
    checks.append(
        Check(
            "prior",
            bool(priors),
            ", ".join(priors) if priors else "no Zero123++ weights (use --prior import DIR or --prior none)",
            "" if priors else f"on a machine with network: {weights.ZERO123PP['v1.1'].command()} (see the table below)",
        )
    )
    encoders = [m for m in ENCODER_MODELS if hub_model_present(m)]
    checks.append(
        Check("encoder", True, ", ".join(encoders) if encoders else "small CNN trained jointly (no DINOv2 weights found)",
              "" if encoders else f"optional: {weights.DINOV2_SMALL.command()}")
    )
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        version = " ".join(subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=20).stdout.split()[:3])
        checks.append(Check("ffmpeg", True, f"{version} ({exe})"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("ffmpeg", False, str(exc), "pip install imageio-ffmpeg"))
    return checks


def print_report() -> None:
    table = Table(title="ds4d doctor")
    for column in ("check", "", "detail", "fix"):
        table.add_column(column)
    for check in gather_checks():
        mark = "[green]ok[/green]" if check.ok else "[red]missing[/red]"
        table.add_row(check.name, mark, check.detail, check.hint)
    console.print(table)
    for line in weights_lines():
        console.print(line, soft_wrap=True, highlight=False, markup=False)


def weights_lines() -> list[str]:
    """What to download for the optional pretrained models: hub id, files, command (unwrapped,
    so that each command can be copied as one line)."""
    lines = ["", "Pretrained weights (optional; ds4d never downloads: fetch them on a machine with network):"]
    for w in weights.ALL:
        cached = " (in the Hugging Face cache)" if hub_model_present(w.repo_id) else ""
        lines += [f"  {w.repo_id}{cached}: for `{w.used_by}`; {w.note}",
                  f"    files (glob patterns, the same for every revision): {', '.join(w.patterns)}",
                  f"    {w.command()}"]
    return lines
