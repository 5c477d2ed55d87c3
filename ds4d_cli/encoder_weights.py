"""Loading a pretrained frame encoder (``ds4d fit --encoder DIR``) from local files, never the network.

The model code (:class:`ds4d_cli.model.features.DinoEncoder`) receives the loaded backbone and
reads no files; the user-facing errors for a missing or broken folder are raised here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ds4d_cli.errors import MissingWeightsError


def load_dinov2(path: str | Path) -> Any:
    """A transformers DINOv2 model from a folder written by ``save_pretrained`` (config.json + weights)."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise MissingWeightsError(
            f"no DINOv2 weights at {path}",
            hint="point --encoder at a local folder holding config.json and the weights (e.g. "
            "facebook/dinov2-small saved with save_pretrained), or omit --encoder to train the small conv encoder",
        )
    try:
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(
            f"could not load the encoder weights at {path}: {str(exc).splitlines()[0]}",
            hint="check the folder holds a complete transformers DINOv2 checkpoint, or omit --encoder",
        ) from exc
