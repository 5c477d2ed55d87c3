"""Per (frame, prior view) corrections of pose and colour, learnt with the fit.

Why: generated views carry a diffusion model's typical errors, and they differ from frame to
frame: a camera a few degrees off its nominal pose, a few percent of gain and offset in colour
(the shared ``*_noisy`` examples: +-3 deg azimuth and elevation, +-3% distance, +-5% gain, +-0.02
offset, drawn per view and per frame). A dynamic model fitted to them explains a view's
frame-to-frame jitter as motion of the object, and its colour drift as the object's colour. A
small rigid motion and a colour gain/offset per (frame, view) absorb both; the input view
(view 0), the camera the clip was filmed with, is never corrected, so it keeps the world and the
motion anchored.

The pose correction moves the Gaussians rendered for that camera (a rotation about the world
origin, where the object is centred, then a translation): the same image as moving the camera
by the inverse, and it keeps the C++ renderer's fast path, which takes no camera gradients. The
fit trains the translation only when asked (``TrainConfig.view_translation``): with exact views
it drifted by 1% of the object's size and cost up to 2.2 dB on held-out views (README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ds4d_cli.render.projection import quat_multiply, quat_to_rotmat


def _axis_angle_quat(w: Tensor) -> Tensor:
    """Unit quaternion [..., 4] of rotation vectors ``w`` [..., 3] (smooth at 0)."""
    half = 0.5 * w.norm(dim=-1, keepdim=True)
    # sin(x)/x by its series near 0 keeps the gradient finite at the zero initialisation
    sinc = torch.where(half < 1e-4, 1 - half**2 / 6, torch.sin(half) / half.clamp_min(1e-12))
    return torch.cat([torch.cos(half), 0.5 * sinc * w], -1)


class ViewCorrection(nn.Module):
    """Rotation vector, translation, log-gain and offset per (frame, view); view 0 stays fixed."""

    def __init__(self, num_frames: int, num_views: int) -> None:
        super().__init__()
        shape = (num_frames, num_views, 3)
        self.rotation = nn.Parameter(torch.zeros(shape))
        self.translation = nn.Parameter(torch.zeros(shape))
        self.log_gain = nn.Parameter(torch.zeros(shape))
        self.offset = nn.Parameter(torch.zeros(shape))

    def _pick(self, p: Tensor, frames: list[int], views: list[int]) -> Tensor:
        """[B * V', 3] rows of ``p`` for the cameras of a step (frame-major), 0 for view 0."""
        t = torch.tensor(frames, device=p.device).repeat_interleave(len(views))
        v = torch.tensor(views, device=p.device).repeat(len(frames))
        return p[t, v] * (v > 0).to(p.dtype)[:, None]

    def move(self, means: Tensor, quats: Tensor, frames: list[int], views: list[int]) -> tuple[Tensor, Tensor]:
        """Per-camera means [C, N, 3] and unit quats [C, N, 4] as the corrected cameras see them."""
        q = _axis_angle_quat(self._pick(self.rotation, frames, views))  # [C, 4]
        R = quat_to_rotmat(q)
        means = torch.einsum("cij,cnj->cni", R, means) + self._pick(self.translation, frames, views)[:, None]
        return means, F.normalize(quat_multiply(q[:, None], quats), dim=-1)

    def colour(self, rgb: Tensor, alpha: Tensor, frames: list[int], views: list[int]) -> Tensor:
        """Premultiplied rgb [C, H, W, 3] with each camera's gain and offset (offset under alpha)."""
        gain = torch.exp(self._pick(self.log_gain, frames, views))[:, None, None]
        off = self._pick(self.offset, frames, views)[:, None, None]
        return rgb * gain + off * alpha
