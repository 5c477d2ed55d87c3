"""Zero123++'s output layout: which tile of its 3x2 grid is which view, and where that camera is.

Zero123++ draws six views into one 960 x 640 image (3 rows x 2 columns of 320 px tiles), read
row by row: tile k (row k // 2, column k % 2) is the k-th view of
:func:`ds4d_cli.cameras.zero123pp_view_angles` -- azimuth 30, 90, ..., 330 degrees relative to
the input view, elevations alternating high/low (v1.1: +30/-20, v1.2: +20/-10).

The field of view and distance of the generated cameras are *choices* we document here, since
the model card fixes only the angles (and v1.2's 30 degree field of view):

- v1.1 follows Zero-1-to-3's renders, the same as our input camera: 49.1 deg at radius 2.0.
- v1.2 outputs a 30 deg field of view; we put its cameras at the distance that keeps the object
  at the same apparent size as in the input view (2.0 * tan(49.1/2) / tan(30/2) ~ 3.41).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ds4d_cli.cameras import (
    DEFAULT_FOV_DEG,
    DEFAULT_RADIUS,
    intrinsics_from_fov,
    orbit_camera,
    zero123pp_view_angles,
)
from ds4d_cli.errors import Ds4dError

GRID_ROWS = 3
GRID_COLS = 2
NUM_VIEWS = GRID_ROWS * GRID_COLS
VIEW_SIZE = 320

HUB_IDS = {"v1.1": "sudo-ai/zero123plus-v1.1", "v1.2": "sudo-ai/zero123plus-v1.2"}
#: Default sampling steps per variant (v1.1: 75 as the public DS4D/STAG4D code; v1.2: its card's 28).
DEFAULT_STEPS = {"v1.1": 75, "v1.2": 28}
_VIEW_FOV_DEG = {"v1.1": DEFAULT_FOV_DEG, "v1.2": 30.0}


def check_variant(variant: str) -> str:
    if variant not in HUB_IDS:
        raise Ds4dError(f"unknown Zero123++ variant {variant!r}", hint="use --variant v1.1 or v1.2")
    return variant


def view_fov_deg(variant: str) -> float:
    return _VIEW_FOV_DEG[check_variant(variant)]


def view_radius(variant: str) -> float:
    """Camera distance that gives the generated views the input view's object scale."""
    fov = view_fov_deg(variant)
    return DEFAULT_RADIUS * math.tan(math.radians(DEFAULT_FOV_DEG) / 2) / math.tan(math.radians(fov) / 2)


def view_name(azimuth_deg: float, elevation_deg: float) -> str:
    """``az030_el20`` / ``az090_el-10``: stable names used in cameras.json and by ``--views``."""
    return f"az{int(round(azimuth_deg)) % 360:03d}_el{int(round(elevation_deg))}"


def zero123pp_views(variant: str, size: int = VIEW_SIZE) -> list[dict]:
    """cameras.json entries of the six generated views, in grid order."""
    fov, radius = view_fov_deg(variant), view_radius(variant)
    K = intrinsics_from_fov(fov, size).tolist()
    views = []
    for az, el in zero123pp_view_angles(variant):
        views.append({
            "name": view_name(az, el),
            "azimuth_deg": az,
            "elevation_deg": el,
            "camera_to_world": orbit_camera(az, el, radius, dtype=torch.float64).tolist(),
            "K": K,
            "width": size,
            "height": size,
        })
    return views


def split_grid(grid: Image.Image | np.ndarray) -> list[np.ndarray]:
    """Cut a 3x2 grid image into its six tiles (row-major), each [H/3, W/2, C]."""
    arr = np.asarray(grid)
    h, w = arr.shape[:2]
    if h % GRID_ROWS or w % GRID_COLS:
        raise ValueError(f"grid of {w}x{h} px does not split into {GRID_COLS}x{GRID_ROWS} tiles")
    th, tw = h // GRID_ROWS, w // GRID_COLS
    return [arr[r * th:(r + 1) * th, c * tw:(c + 1) * tw].copy() for r in range(GRID_ROWS) for c in range(GRID_COLS)]


def join_grid(tiles: list[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`split_grid` (for contact sheets)."""
    if len(tiles) != NUM_VIEWS:
        raise ValueError(f"need {NUM_VIEWS} tiles, got {len(tiles)}")
    rows = [np.concatenate(tiles[r * GRID_COLS:(r + 1) * GRID_COLS], axis=1) for r in range(GRID_ROWS)]
    return np.concatenate(rows, axis=0)
