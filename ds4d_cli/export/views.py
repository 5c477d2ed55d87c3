"""Cameras and backgrounds for exported renders, and one call that renders a model into them.

Turntable and grid cameras orbit the world origin (where preprocessing centres the object) at the
input camera's distance and field of view, so the object fills the frame as in the input video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ds4d_cli.cameras import DEFAULT_FOV_DEG, DEFAULT_RADIUS, c2w_to_viewmat, intrinsics_from_fov, orbit_camera
from ds4d_cli.errors import Ds4dError

_NAMED = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5)}


def parse_background(text: str) -> tuple[float, float, float]:
    """``white``, ``black``, ``gray`` or ``#rrggbb`` -> RGB in [0, 1]."""
    key = text.strip().lower()
    if key in _NAMED:
        return _NAMED[key]
    hexpart = key[1:] if key.startswith("#") else key
    if len(hexpart) == 6:
        try:
            return tuple(int(hexpart[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
        except ValueError:
            pass
    raise Ds4dError(f"unknown background colour {text!r}", hint="use white, black, gray or a hex colour like #202020")


@dataclass(frozen=True)
class Framing:
    """Where export cameras sit: distance to the origin and horizontal field of view."""

    radius: float = DEFAULT_RADIUS
    fov_deg: float = DEFAULT_FOV_DEG

    @classmethod
    def from_cameras_json(cls, cameras: dict[str, Any] | None) -> "Framing":
        """The input camera's distance and fov from generate/cameras.json (defaults if absent)."""
        try:
            inp = cameras["input"]  # type: ignore[index]
            c2w = np.asarray(inp["camera_to_world"], dtype=np.float64)
            fx = float(np.asarray(inp["K"], dtype=np.float64)[0, 0])
            width = float(inp["width"])
            radius = float(np.linalg.norm(c2w[:3, 3]))
            fov = math.degrees(2.0 * math.atan(0.5 * width / fx))
            if radius > 0 and 0 < fov < 179:
                return cls(radius, fov)
        except (KeyError, TypeError, ValueError, IndexError):
            pass
        return cls()


def orbit_views(
    azimuths_deg: Sequence[float], elevations_deg: Sequence[float] | float, size: int, framing: Framing = Framing()
) -> tuple[Tensor, Tensor]:
    """viewmats [C,4,4] and Ks [C,3,3] of cameras on the framing sphere looking at the origin."""
    az = torch.as_tensor(list(azimuths_deg), dtype=torch.float64)
    el = torch.as_tensor(elevations_deg, dtype=torch.float64)
    el = el.expand_as(az) if el.dim() == 0 else el
    c2w = orbit_camera(az, el, framing.radius)
    viewmats = c2w_to_viewmat(c2w).float()
    Ks = intrinsics_from_fov(framing.fov_deg, size)[None].expand(len(az), 3, 3).clone()
    return viewmats, Ks


def render_rgb(
    model: Any, frame_index: int, viewmats: Tensor, Ks: Tensor, width: int, height: int,
    background: Sequence[float],
) -> Tensor:
    """The model's frame seen from C cameras: float [C,H,W,3] in [0,1], composited on ``background``."""
    bg = torch.tensor(list(background), dtype=torch.float32)
    with torch.no_grad():
        out = model.render(frame_index, viewmats, Ks, width, height, bg)
    rgb = out.rgb if hasattr(out, "rgb") else out
    return rgb.detach().float().cpu().clamp(0.0, 1.0)


def to_uint8(images: Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
