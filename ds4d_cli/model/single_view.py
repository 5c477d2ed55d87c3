"""The single-view geometry prior: what the trainer adds when the fit has the input view only.

Three hooks, each one call from :class:`ds4d_cli.model.trainer.Trainer`:

- :meth:`SingleViewPrior.init_points` -- the initial Gaussians on the surface of the guessed
  volume of the middle frame (:mod:`.inflate`), instead of the silhouette extruded along the
  camera ray; unseen sides take the colour of the input pixel along their ray (the front's),
  read from the silhouette's interior so that the rim's background tint stays off them;
- :meth:`SingleViewPrior.losses` -- the regularisers on unseen views (:mod:`.regularisers`),
  added to the step's loss;
- :meth:`SingleViewPrior.prune_mask` -- Gaussians far outside the volume, removed with the
  trainer's other floaters.

The prior learns nothing and keeps no state beyond what it computes from the input frames, so a
checkpoint needs nothing from it; its random cameras are drawn from (seed, step), so a resumed
fit sees the same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ds4d_cli.render import render

from . import regularisers as reg
from .inflate import InflatedVolume, interior_colours
from .init import InitPoints, _colors, _surface
from .losses import image_losses


@dataclass
class SingleViewSettings:
    """The prior's knobs (TrainConfig's ``single_view``). Defaults chosen by measurement on the shared
    examples (README, "One view only"); the terms at weight 0 measured no better there."""

    shape: str = "spans"  # the volume's cross-sections: "spans" (as deep as wide) or "balls" (inflation)
    thickness: float = 1.0  # depth scale of the cross-sections (1 = round)
    mirror_back: bool = True  # the volume's back half mirrors its front (no perspective flare)
    unseen_views: int = 2  # random cameras per step
    unseen_resolution: int = 64
    unseen_weight: float = 0.5  # silhouette L1 on the random cameras
    silhouette_resolution: int = 96  # voxel grid of the random cameras' target silhouettes
    avoid_input_deg: float = 30.0  # random cameras keep this far (azimuth) from the input camera
    volume_weight: float = 1.0  # mean distance outside the volume (world units): a guard against debris
    prune_distance: float = 0.05  # world units outside the volume in some frame -> removed
    init_resolution: int = 96  # voxel grid of the initial surface
    interior_colours: bool = True  # colour unseen sides from the nearest interior pixel, not the rim
    opacity_weight: float = 0.0  # o (1 - o)
    colour_weight: float = 0.0  # unseen Gaussians keep the colour of the input pixel on their ray
    depth_weight: float = 0.0  # depth smoothness of the input view's render
    mirror_weight: float = 0.0  # the flipped input frame seen from the mirrored camera (front/back symmetry)


class SingleViewPrior:
    def __init__(self, images: Tensor, viewmat: Tensor, K: Tensor, settings: SingleViewSettings,
                 bound: float = 1.0, seed: int = 0) -> None:
        """``images`` [T, H, W, 4] the input view's frames, ``viewmat``/``K`` its camera."""
        self.s = settings
        self.bound = bound
        self.seed = seed
        t, h, w, _ = images.shape
        self.width = w
        self.device = images.device
        # colours for unseen sides: the nearest interior pixel's (no background tint from the rim)
        self._images = interior_colours(images.detach().cpu()) if settings.interior_colours else images.detach().cpu()
        self._images_dev = self._images.to(self.device)
        self.volume = InflatedVolume.from_alphas(images[..., 3].cpu(), viewmat.cpu(), K.cpu(), settings.thickness,
                                                 shape=settings.shape, mirror_back=settings.mirror_back)
        self._cpu_volume = self.volume
        self.volume = self.volume.to(self.device)
        self.radius = reg.orbit_radius(viewmat)
        self.input_azimuth = reg.orbit_azimuth(viewmat)
        # a little wider than the input crop, so the object stays in the random cameras' frames
        self.focal = 0.8 * reg.input_focal(K, w) * settings.unseen_resolution
        self.mirror = reg.mirror_camera(viewmat.float(), K.float(), w)
        self._mirrored = images.flip(2) if settings.mirror_weight > 0 else None  # [T, H, W, 4]

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_points(self, num_points: int, generator: torch.Generator | None = None) -> InitPoints | None:
        """Points on the surface of the middle frame's volume, coloured from the input pixel on their
        ray (:func:`.inflate.interior_colours`); None when the volume is (nearly) empty (no
        silhouette: the caller falls back)."""
        images, viewmat, K = self._images, self._cpu_volume.viewmat, self._cpu_volume.K
        mid = images.shape[0] // 2
        res = self.s.init_resolution
        occ = self._cpu_volume.occupancy(mid, self.bound, res, tolerance=True)
        voxel = 2 * self.bound / res
        if int(occ.sum()) < 50:
            return None
        surf = _surface(occ)
        idx = torch.nonzero(surf if int(surf.sum()) >= 50 else occ).float()
        pick = torch.randint(0, idx.shape[0], (num_points,), generator=generator)
        jitter = torch.rand(num_points, 3, generator=generator)
        means = (idx[pick] + jitter) * voxel - self.bound
        spacing = max(math.sqrt(idx.shape[0] * voxel * voxel / num_points), voxel * 0.5)
        colors = _colors(means, images[mid][None], viewmat[None].float(), K[None].float())
        return InitPoints(means, colors, float(spacing), "inflated_silhouette")

    # ------------------------------------------------------------------ losses
    def _cameras(self, step: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        vm, K = reg.random_cameras(self.s.unseen_views, self.radius, self.focal, self.s.unseen_resolution, gen,
                                   avoid_azimuth=self.input_azimuth, avoid_deg=self.s.avoid_input_deg)
        return vm.to(self.device), K.to(self.device)

    def _target(self, frame: int, viewmats: Tensor, Ks: Tensor) -> Tensor:
        r = self.s.unseen_resolution
        return self.volume.silhouettes(frame, viewmats, Ks, r, r, self.bound, self.s.silhouette_resolution)

    def losses(self, trainer: Any, frames: list[int], deformed: Any, rendered: Any = None) -> dict[str, Tensor]:
        """Weighted regulariser terms for the step's ``frames``, their ``deformed`` Gaussians and
        the step's render of the input view (``rendered``, one camera per frame)."""
        s, out = self.s, {}
        if s.depth_weight > 0 and rendered is not None:
            out["depth_smoothness"] = s.depth_weight * reg.depth_smoothness(rendered.depth, rendered.alpha)
        if s.volume_weight > 0:
            out["volume"] = s.volume_weight * reg.volume_excess(self.volume, deformed.means, frames)
        if s.unseen_weight > 0 and s.unseen_views > 0:
            vm, Ks = self._cameras(trainer.step_count)
            c, b, r = vm.shape[0], len(frames), s.unseen_resolution
            rep = lambda x: x.unsqueeze(1).expand(-1, c, *x.shape[1:]).reshape(b * c, *x.shape[1:])  # noqa: E731
            g = trainer.gaussians
            rendered = render(rep(deformed.means), F.normalize(rep(deformed.quats), dim=-1), torch.exp(rep(deformed.scales)),
                              g.opacities, trainer._colors(), vm.repeat(b, 1, 1), Ks.repeat(b, 1, 1), r, r,
                              backend=trainer.cfg.backend, sh_degree=trainer._sh_arg())
            target = torch.cat([self._target(f, vm, Ks) for f in frames])
            out["unseen_silhouette"] = s.unseen_weight * reg.silhouette_l1(rendered.alpha, target)
        if s.mirror_weight > 0:
            vm, K = (x[None].to(self.device) for x in self.mirror)
            h, w = self._mirrored.shape[1:3]
            g = trainer.gaussians
            rendered = render(deformed.means, F.normalize(deformed.quats, dim=-1), torch.exp(deformed.scales),
                              g.opacities, trainer._colors(), vm.expand(len(frames), 4, 4), K.expand(len(frames), 3, 3),
                              w, h, backend=trainer.cfg.backend, sh_degree=trainer._sh_arg())
            bg = torch.rand(3, device=self.device)
            pred = rendered.rgb + (1 - rendered.alpha) * bg
            weights = torch.ones(len(frames), device=self.device)
            terms = image_losses(pred, rendered.alpha, self._mirrored[frames], bg, weights,
                                 trainer.cfg.ssim_weight, trainer.cfg.mask_weight)
            out["mirror"] = s.mirror_weight * terms["total"]
        if s.colour_weight > 0:
            hidden = 1 - trainer._visibility()[0].detach()  # [N]: not seen by the input view
            out["ray_colour"] = s.colour_weight * reg.ray_colour(
                trainer.gaussians.colors, deformed.means, self._images_dev[frames], self.volume.viewmat,
                self.volume.K, hidden)
        if s.opacity_weight > 0:
            out["opacity_binary"] = s.opacity_weight * reg.opacity_binary(trainer.gaussians.opacities)
        return out

    # ------------------------------------------------------------------ prune
    @torch.no_grad()
    def prune_mask(self, trainer: Any, chunk: int = 4) -> Tensor:
        """[N] bool: Gaussians more than ``prune_distance`` outside the volume in some frame."""
        T = trainer.data.num_frames
        chunks = [list(range(i, min(T, i + chunk))) for i in range(0, T, chunk)]
        means = [trainer.deformed(c).means for c in chunks]
        return reg.far_from_volume(self.volume, means, chunks, self.s.prune_distance)
