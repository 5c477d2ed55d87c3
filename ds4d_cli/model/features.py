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

    @staticmethod
    def prepare(rgba: Tensor) -> Tensor:
        """The net's input [B,4,H,W] from RGBA [B,H,W,4]: fixed per frame, so a trainer computes
        it once per clip instead of every step (the premultiply and channels-first copy cost
        about 5 ms a step re-encoding the clip's 168 images)."""
        return (_premultiply(rgba) * 2 - 1).contiguous(memory_format=torch.channels_last)

    def encode_prepared(self, x: Tensor) -> Tensor:
        # channels-last, as the permuted RGBA always gave it: the convolution kernels (and so the
        # rounding of a fit) stay those of the per-step path
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def forward(self, rgba: Tensor) -> Tensor:
        return self.encode_prepared(self.prepare(rgba))


class ImageFeatures(nn.Module):
    """Fixed multi-scale colour/gradient features: no weights, computed once per clip.

    Per pixel: premultiplied RGB and alpha at three blur scales (sigma 0, 1, 2 px of the
    encoded image) and the horizontal/vertical gradients of luminance and alpha at the two
    finer scales -- 4 + 4 + 4 + 8 = 20 channels at the encoder's input resolution (stride 1).

    Why: a thin moving part (a blade, a wing) is a few pixels wide. The jointly-trained conv
    encoder saw a 64 px copy at stride 4 (16x16 features), where such parts vanish, and had to be
    re-encoded every step because it drifts. These features keep the full sampling resolution,
    cost nothing per step, and make DSFD's dynamic part a plain "what changed here" signal.
    """

    trainable = False
    SIGMAS = (1.0, 2.0)

    def __init__(self) -> None:
        super().__init__()
        self.out_dim = 20
        for i, s in enumerate(self.SIGMAS):
            r = int(3 * s)
            x = torch.arange(-r, r + 1, dtype=torch.float32)
            k = torch.exp(-0.5 * (x / s) ** 2)
            self.register_buffer(f"blur{i}", (k / k.sum()).view(1, 1, 1, -1), persistent=False)

    def _blur(self, x: Tensor, i: int) -> Tensor:
        k = getattr(self, f"blur{i}")
        c, r = x.shape[1], k.shape[-1] // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.expand(c, 1, 1, -1), groups=c)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(-1, -2).expand(c, 1, -1, 1), groups=c)

    @staticmethod
    def _grad(x: Tensor) -> Tensor:
        """Central differences of luminance and alpha: [B, 4, H, W] (d/dx, d/dy of each)."""
        lum = (x[:, :3] * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        y = torch.cat([lum, x[:, 3:4]], 1)
        p = F.pad(y, (1, 1, 1, 1), mode="replicate")
        gx = 0.5 * (p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2])
        gy = 0.5 * (p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1])
        return torch.cat([gx, gy], 1)

    @torch.no_grad()
    def forward(self, rgba: Tensor) -> Tensor:
        x = _premultiply(rgba)
        b1 = self._blur(x, 0)
        b2 = self._blur(x, 1)
        return torch.cat([x, b1, b2, self._grad(x), self._grad(b1)], 1)


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


ENCODERS = ("image", "conv")


def build_encoder(backbone: nn.Module | None, out_dim: int = 16, kind: str = "conv") -> nn.Module:
    """The frozen DINOv2 ``backbone`` when one is given; else ``kind``: the fixed multi-scale image
    features ("image") or the jointly-trained conv encoder ("conv")."""
    if backbone is not None:
        return DinoEncoder(backbone)
    if kind == "conv":
        return ConvEncoder(out_dim)
    if kind == "image":
        return ImageFeatures()
    raise ValueError(f"unknown encoder {kind!r}; expected one of {ENCODERS}")
