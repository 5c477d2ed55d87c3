"""Frame encoders: RGBA image -> feature map ("frame features" of DS4D).

Two encoders share one interface (``forward(rgba [B,H,W,4] in [0,1]) -> [B, C, h, w]``,
``out_dim``, ``trainable``):

- :class:`ConvEncoder` (default): a small stride-4 conv net trained jointly with the Gaussians.
  Cheap enough to re-run on the frames of every step on a CPU.
- :class:`DinoEncoder` (``--encoder PATH``): a frozen pretrained DINOv2 (a transformers model the
  caller loaded, see :mod:`ds4d_cli.encoder_weights`); its patch tokens form the feature map.
  Frozen, so the features of the whole clip are computed once per fit and cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _premultiply(rgba: Tensor) -> Tensor:
    """[B,H,W,4] straight alpha -> [B,4,H,W] with premultiplied RGB (background-independent)."""
    x = rgba.permute(0, 3, 1, 2)
    return torch.cat([x[:, :3] * x[:, 3:4], x[:, 3:4]], dim=1)


class ConvEncoder(nn.Module):
    trainable = True

    def __init__(self, out_dim: int = 16, width: int = 24) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Conv2d(4, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, out_dim, 3, padding=1),
        )

    def forward(self, rgba: Tensor) -> Tensor:
        return self.net(_premultiply(rgba) * 2 - 1)


class DinoEncoder(nn.Module):
    """Frozen DINOv2 (any size, already loaded); features = last hidden patch tokens."""

    trainable = False
    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, backbone: nn.Module, image_size: int = 224) -> None:
        super().__init__()
        self.model = backbone
        self.model.eval().requires_grad_(False)
        self.patch = int(getattr(self.model.config, "patch_size", 14))
        self.image_size = image_size - image_size % self.patch
        self.out_dim = int(self.model.config.hidden_size)
        self.register_buffer("mean", torch.tensor(self._MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self._STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, rgba: Tensor) -> Tensor:
        x = rgba.permute(0, 3, 1, 2)
        rgb = x[:, :3] * x[:, 3:4] + (1 - x[:, 3:4])  # over white, as such backbones expect
        rgb = F.interpolate(rgb, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        out = self.model(pixel_values=(rgb - self.mean) / self.std)
        tokens = out.last_hidden_state[:, 1:]  # drop CLS (no register tokens in dinov2-small)
        side = self.image_size // self.patch
        tokens = tokens[:, -side * side :]
        return tokens.transpose(1, 2).reshape(rgb.shape[0], self.out_dim, side, side)


def build_encoder(backbone: nn.Module | None, out_dim: int = 16) -> nn.Module:
    """The jointly-trained conv encoder, or the frozen DINOv2 ``backbone`` when one is given."""
    if backbone is None:
        return ConvEncoder(out_dim)
    return DinoEncoder(backbone)
