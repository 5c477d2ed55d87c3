"""Reference ("ref-only") attention and STAG4D's temporal anchor: how the condition image, and a
clip's first frame, steer every self-attention layer of Zero123++'s UNet.

Reference attention (Zero123++): the condition image is not concatenated to the noisy input.
At every denoising step its VAE latent, noised to the *same* timestep, runs through the same
UNet in a "write" pass in which every self-attention layer records its input; in the following
"read" pass over the noisy grid each self-attention layer attends to its own tokens *and* to the
recorded ones (keys and values = [own | condition]; queries = own). Two UNet passes per step.

Temporal anchor (STAG4D, used by DS4D): sampling frame 0 records, per denoising step and
self-attention layer, the read pass's own tokens (:class:`AnchorCache`). For every later frame
the read pass's own tokens *in the keys and values* are replaced by the mean of frame 0's
recorded ones and its own; queries and the condition tokens are untouched, and it costs no
extra UNet pass. Frame 0 itself is sampled exactly as without the anchor.

Randomness: the reference latent is noised with ``noise_to_timestep``'s draw from the *sampler's
generator* (upstream Zero123++ and STAG4D use the global RNG, ``torch.randn_like``), so a seed
reproduces a run whatever the global RNG state. The generator's draws per step are: this
reference noise, then the Euler-ancestral step noise.

Implemented as diffusers attention processors (no change to the UNet's weights or class, so a
stock ``UNet2DConditionModel`` from the published model folder is used as is).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.utils.torch_utils import randn_tensor

WRITE = "write"
READ = "read"


def choose_cache_device(device: torch.device, bytes_needed: int) -> torch.device:
    """Where a cache of ``bytes_needed`` should live: on its GPU when that fits in half of the free
    memory there, else in host memory (a CPU tensor on a CPU run stays on the CPU)."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if bytes_needed <= free // 2 else torch.device("cpu")


class AnchorCache:
    """Frame 0's own self-attention tokens per (denoising step, layer), for STAG4D's anchor.

    Pass the same instance to the pipeline for every frame of a clip: the first call records,
    later calls blend. ``device``: where the tokens are kept; None decides after the first step
    (:func:`choose_cache_device` on that step's size times the number of steps). The real
    Zero123++ UNet records about 108 MB per step in fp16 with guidance (16 layers, batch 2).
    """

    def __init__(self, device: Optional[torch.device | str] = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.tokens: dict[tuple[int, str], torch.Tensor] = {}
        self.num_steps: Optional[int] = None
        self.recorded = False  # True once frame 0 has been sampled

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tokens.values())

    def begin(self, num_steps: int) -> None:
        """Called by the pipeline before sampling a frame."""
        if not self.recorded:
            self.tokens.clear()
            self.num_steps = num_steps
        elif num_steps != self.num_steps:
            raise ValueError(f"the anchor was recorded over {self.num_steps} denoising steps, "
                             f"this frame takes {num_steps}: use the same steps for every frame")

    def step_done(self, step: int) -> None:
        """After each denoising step; settles the cache's device after the first one."""
        if self.recorded or step != 0 or self.device is not None or not self.tokens:
            return
        first = next(iter(self.tokens.values()))
        self.device = choose_cache_device(first.device, self.nbytes * int(self.num_steps or 1))
        self.tokens = {k: v.to(self.device) for k, v in self.tokens.items()}

    def end(self) -> None:
        """After a frame: a recording frame freezes the cache."""
        if not self.recorded and self.tokens:
            self.recorded = True

    def apply(self, step: int, name: str, own: torch.Tensor) -> torch.Tensor:
        """The tokens the read pass's keys/values use in place of ``own`` (frame 0: ``own``)."""
        key = (step, name)
        if not self.recorded:
            self.tokens[key] = own.detach().to(self.device if self.device is not None else own.device, copy=True)
            return own
        cached = self.tokens.get(key)
        if cached is None or cached.shape != own.shape:
            raise ValueError(f"no anchor tokens recorded for layer {name} at step {step} with shape "
                             f"{tuple(own.shape)}: sample every frame with the same settings as frame 0")
        return (cached.to(device=own.device, dtype=own.dtype) + own) * 0.5


class _AnchorAt:
    """An :class:`AnchorCache` bound to one denoising step (what the processors receive)."""

    def __init__(self, cache: AnchorCache, step: int) -> None:
        self.cache, self.step = cache, step

    def __call__(self, name: str, own: torch.Tensor) -> torch.Tensor:
        return self.cache.apply(self.step, name, own)


class RefAttnProcessor:
    """Self-attention that records (write) or also attends to the recorded tokens (read)."""

    def __init__(self, name: str, enabled: bool, inner: Any | None = None) -> None:
        self.name = name
        self.enabled = enabled
        self.inner = inner if inner is not None else AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ref_mode: str | None = None,
        ref_store: dict[str, torch.Tensor] | None = None,
        ref_anchor: _AnchorAt | None = None,
    ) -> torch.Tensor:
        if self.enabled and ref_mode is not None and ref_store is not None:
            own = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if ref_mode == WRITE:
                ref_store[self.name] = own
            elif ref_mode == READ:
                kv_own = ref_anchor(self.name, own) if ref_anchor is not None else own
                recorded = ref_store.get(self.name)
                parts = [kv_own] + ([recorded.to(own.dtype)] if recorded is not None else [])
                if len(parts) > 1 or kv_own is not own:
                    encoder_hidden_states = torch.cat(parts, dim=1)
            else:
                raise ValueError(f"unknown reference-attention mode {ref_mode!r}")
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_ref_attention(unet: UNet2DConditionModel) -> None:
    """Put :class:`RefAttnProcessor` on every attention module (idempotent).

    All modules get one because diffusers hands ``cross_attention_kwargs`` to every processor
    (and warns about unknown keys); only self-attention ones are enabled.
    """
    procs = unet.attn_processors
    if procs and all(isinstance(p, RefAttnProcessor) for p in procs.values()):
        return
    unet.set_attn_processor({
        name: RefAttnProcessor(name, enabled=name.endswith("attn1.processor"))
        for name in procs
    })


def noise_to_timestep(
    latents: torch.Tensor, timestep: torch.Tensor | float, alphas_cumprod: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0) at an integer training timestep.

    Equal to Euler's ``add_noise`` followed by ``scale_model_input`` (x0 + sigma*eps over
    sqrt(sigma^2 + 1)), written without touching the sampling scheduler's step state. The noise
    comes from ``generator`` (see the module docstring).
    """
    t = int(round(float(timestep)))
    t = max(0, min(t, alphas_cumprod.shape[0] - 1))
    ac = alphas_cumprod[t].to(device=latents.device, dtype=torch.float32)
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    noisy = ac.sqrt() * latents.float() + (1 - ac).sqrt() * noise
    return noisy.to(latents.dtype)


class RefOnlyUNet:
    """Wraps a UNet: one write pass over the noised reference latent, then the read pass over ``sample``."""

    def __init__(self, unet: UNet2DConditionModel, alphas_cumprod: torch.Tensor) -> None:
        install_ref_attention(unet)
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        reference: torch.Tensor,
        generator: torch.Generator | None = None,
        anchor: AnchorCache | None = None,
        step: int = 0,
    ) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}
        noisy = noise_to_timestep(reference, timestep, self.alphas_cumprod, generator)
        self.unet(
            noisy, timestep, encoder_hidden_states,
            cross_attention_kwargs={"ref_mode": WRITE, "ref_store": store}, return_dict=False,
        )
        read: dict[str, Any] = {"ref_mode": READ, "ref_store": store}
        if anchor is not None:
            read["ref_anchor"] = _AnchorAt(anchor, step)
        return self.unet(sample, timestep, encoder_hidden_states, cross_attention_kwargs=read, return_dict=False)[0]
