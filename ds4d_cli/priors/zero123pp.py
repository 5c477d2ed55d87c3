"""Zero123++ as our own diffusers pipeline, written from the paper and the published model card.

One RGB(A) image in, one 3x2 grid of six consistent views out (see :mod:`.layout`). The pieces:

- **Local condition** -- reference attention (:mod:`.ref_attention`): the condition image's VAE
  latent (unscaled, i.e. about 5x larger than the usual ``scaling_factor`` latents, which is the
  paper's "scaled reference attention") is noised to each step's timestep and written into the
  UNet's self-attention. For classifier-free guidance the unconditional branch gets the latent
  of an all-zero (mid-grey) image instead. Both latents are *samples* of the VAE posterior, as
  upstream draws them, but from the sampler's generator (upstream: the global RNG).
- **Temporal anchor** (optional, STAG4D/DS4D): an :class:`~.ref_attention.AnchorCache` shared by
  the frames of a clip records frame 0's self-attention tokens and blends them into later frames.
- **Global condition** -- FlexDiffuse-style: the CLIP image embedding is added to the empty
  prompt's text embedding, token i weighted by ``ramping_coefficients[i]`` (a model config
  value). The unconditional branch uses the bare empty-prompt embedding.
- **Scaling** -- the grid's latents live in ``(z * scaling_factor - 0.22) * 0.75`` and its pixels
  in ``x * 0.5 / 0.8`` (the authors' normalisation of rendered images towards natural ones);
  the condition image uses the VAE feature extractor's ``(x - 0.5) / 0.8``, the same map.
- **Sampler** -- Euler ancestral, v-prediction, "trailing" timestep spacing.

The component names and classes are those of the published model folders (``model_index.json``
+ one sub-folder each), so ``from_pretrained`` loads them and ``save_pretrained`` writes them.
Model code only: no files, no terminal; progress goes through ``callback``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ds4d_cli.priors.layout import GRID_COLS, GRID_ROWS, VIEW_SIZE
from ds4d_cli.priors.ref_attention import AnchorCache, RefOnlyUNet

LATENT_SHIFT = 0.22
LATENT_GAIN = 0.75
IMAGE_GAIN = 0.5 / 0.8
BACKGROUND_GREY = 127  # the flat grey an RGBA condition image is composited on


def scale_latents(z: torch.Tensor) -> torch.Tensor:
    return (z - LATENT_SHIFT) * LATENT_GAIN


def unscale_latents(z: torch.Tensor) -> torch.Tensor:
    return z / LATENT_GAIN + LATENT_SHIFT


def scale_image(x: torch.Tensor) -> torch.Tensor:
    return x * IMAGE_GAIN


def unscale_image(x: torch.Tensor) -> torch.Tensor:
    return x / IMAGE_GAIN


def to_rgb_on_grey(image: Image.Image) -> Image.Image:
    """Composite RGBA over flat grey (what the model was trained on); RGB passes through."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    out = Image.new("RGB", rgba.size, (BACKGROUND_GREY,) * 3)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _edge(size: Any, key: str) -> int | None:
    """Read ``shortest_edge``/``height`` from a processor size (dict, SizeDict or int)."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _stat(value: Any) -> np.ndarray:
    arr = np.asarray(value if value is not None else 0.0, dtype=np.float32).reshape(-1)
    return arr if arr.size == 3 else np.repeat(arr[:1], 3)


def preprocess_like(processor: Any, image: Image.Image) -> torch.Tensor:
    """Resize (shortest edge), centre-crop, rescale and normalise as a CLIPImageProcessor would.

    Done with PIL/numpy from the processor's settings so no torchvision backend is needed.
    """
    img = image.convert("RGB")
    short = _edge(getattr(processor, "size", None), "shortest_edge") or _edge(getattr(processor, "size", None), "height")
    if short and getattr(processor, "do_resize", True):
        w, h = img.size
        # transformers' get_resize_output_image_size: the short edge becomes `short` and the long
        # one int(short * long / short_edge), truncated (rounding was one pixel off, then the crop
        # shifted by half a pixel)
        long_edge = int(short * max(w, h) / min(w, h))
        new = (short, long_edge) if w <= h else (long_edge, short)
        resample = getattr(processor, "resample", Image.Resampling.BICUBIC)
        img = img.resize(new, resample=Image.Resampling(int(resample)) if resample is not None else Image.Resampling.BICUBIC)
    crop = getattr(processor, "crop_size", None)
    ch, cw = _edge(crop, "height"), _edge(crop, "width")
    if crop is not None and getattr(processor, "do_center_crop", True) and ch and cw:
        w, h = img.size
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    arr = np.asarray(img, dtype=np.float32) * float(getattr(processor, "rescale_factor", 1 / 255))
    if getattr(processor, "do_normalize", True):
        arr = (arr - _stat(processor.image_mean)) / _stat(processor.image_std)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


@dataclass
class Zero123PlusOutput:
    images: list[Image.Image]  # one RGB grid (3 rows x 2 cols of views) per call
    latents: torch.Tensor  # final grid latents in the model's (scaled) space


class Zero123PlusPipeline(DiffusionPipeline):
    """Single image -> six-view grid (Zero123++ v1.1 / v1.2 weights)."""

    model_cpu_offload_seq = "vision_encoder->text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: EulerAncestralDiscreteScheduler,
        vision_encoder: CLIPVisionModelWithProjection,
        feature_extractor_clip: Any,
        feature_extractor_vae: Any,
        ramping_coefficients: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            vision_encoder=vision_encoder, feature_extractor_clip=feature_extractor_clip,
            feature_extractor_vae=feature_extractor_vae,
        )
        self.register_to_config(ramping_coefficients=list(ramping_coefficients) if ramping_coefficients else None)

    # -- conditioning ----------------------------------------------------------------------
    def _empty_prompt_embeds(self, device: torch.device) -> torch.Tensor:
        tok = self.tokenizer(
            "", padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tok.input_ids.to(device))[0]

    def _ramp(self, length: int, like: torch.Tensor) -> torch.Tensor:
        coeffs = self.config.ramping_coefficients
        if coeffs is None:  # no ramp in the config: spread the image embedding evenly
            coeffs = [1.0] * length
        if len(coeffs) != length:
            raise ValueError(f"ramping_coefficients has {len(coeffs)} entries for {length} prompt tokens")
        return like.new_tensor(coeffs)[None, :, None]

    @torch.no_grad()
    def encode_condition(self, image: Image.Image, device: torch.device, do_cfg: bool,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt embeddings, reference latents), each with the guidance batch (uncond, cond).

        The reference latents are samples of the VAE posterior drawn with ``generator`` (condition
        first, then the grey image), as upstream Zero123++ samples them (there: the global RNG).
        """
        rgb = to_rgb_on_grey(image)
        vae_dtype = self.vae.dtype
        vae_in = preprocess_like(self.feature_extractor_vae, rgb).to(device=device, dtype=vae_dtype)
        clip_in = preprocess_like(self.feature_extractor_clip, rgb).to(device=device, dtype=self.vision_encoder.dtype)
        ref_lat = self.vae.encode(vae_in).latent_dist.sample(generator=generator)
        image_embeds = self.vision_encoder(clip_in).image_embeds  # [1, D]
        text = self._empty_prompt_embeds(device).to(image_embeds.dtype)  # [1, L, D]
        cond = text + image_embeds[:, None, :] * self._ramp(text.shape[1], text)
        if not do_cfg:
            return cond, ref_lat
        neg_lat = self.vae.encode(torch.zeros_like(vae_in)).latent_dist.sample(generator=generator)
        return torch.cat([text, cond]), torch.cat([neg_lat, ref_lat])

    # -- sampling --------------------------------------------------------------------------
    def prepare_noise(
        self, generator: torch.Generator | None, view_size: int = VIEW_SIZE, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Initial grid noise; reuse one tensor for every frame of a clip to keep views steady."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (1, self.unet.config.in_channels, GRID_ROWS * view_size // factor, GRID_COLS * view_size // factor)
        return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        num_inference_steps: int = 28,
        guidance_scale: float = 4.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        anchor: AnchorCache | None = None,
        view_size: int = VIEW_SIZE,
        output_type: str = "pil",
        callback: Callable[[int, int], None] | None = None,
    ) -> Zero123PlusOutput:
        """Generate the grid for ``image``.

        ``latents``: initial noise (from :meth:`prepare_noise`); shared across frames it keeps the
        sampler's randomness identical from frame to frame. ``anchor``: one
        :class:`~.ref_attention.AnchorCache` for all frames of a clip -- the first call records
        frame 0, later calls are anchored on it (STAG4D). ``generator`` draws, in order, the two
        posterior samples of :meth:`encode_condition`, the initial noise when ``latents`` is
        None, then per step the reference noise and the sampler's noise.
        ``callback(step, total)`` is called after each denoising step.
        """
        device = self._execution_device
        dtype = self.unet.dtype
        do_cfg = guidance_scale > 1.0
        prompt_embeds, ref_lat = self.encode_condition(image, device, do_cfg, generator)
        prompt_embeds, ref_lat = prompt_embeds.to(dtype), ref_lat.to(dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if latents is None:
            latents = self.prepare_noise(generator, view_size, device, torch.float32)
        x = latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma
        ref_unet = RefOnlyUNet(self.unet, self.scheduler.alphas_cumprod)
        timesteps = self.scheduler.timesteps
        if anchor is not None:
            anchor.begin(len(timesteps))
        for i, t in enumerate(timesteps):
            x_in = torch.cat([x, x]) if do_cfg else x
            x_in = self.scheduler.scale_model_input(x_in, t).to(dtype)
            pred = ref_unet(x_in, t, prompt_embeds, ref_lat, generator, anchor=anchor, step=i).float()
            if do_cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            x = self.scheduler.step(pred, t, x, generator=generator, return_dict=False)[0]
            if anchor is not None:
                anchor.step_done(i)
            if callback is not None:
                callback(i + 1, len(timesteps))
        if anchor is not None:
            anchor.end()

        raw = unscale_latents(x) / self.vae.config.scaling_factor
        decoded = self.vae.decode(raw.to(self.vae.dtype), return_dict=False)[0].float()
        pixels = ((unscale_image(decoded) + 1.0) / 2.0).clamp(0.0, 1.0)
        arr = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        images = [Image.fromarray(a) for a in arr] if output_type == "pil" else arr
        return Zero123PlusOutput(images=images, latents=x)
