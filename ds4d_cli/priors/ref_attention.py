"""Reference ("ref-only") attention: how Zero123++ lets the condition image steer every layer.

Zero123++ does not concatenate the condition image to the noisy input. Instead, at every
denoising step the condition image's latent, noised to the *same* timestep, runs through the
same UNet in a "write" pass in which every self-attention layer records its input. In the
following "read" pass over the noisy grid each self-attention layer attends to its own tokens
*and* to the recorded ones, so the grid can copy appearance from the reference while its own
layout stays free.

We implement that with diffusers attention processors (no change to the UNet's weights or
class, so a stock ``UNet2DConditionModel`` from the published model folder is used as is):
:class:`RefAttnProcessor` wraps the default processor of every attention module and is active
only on self-attention (``attn1``). Any number of write passes may precede a read pass: each
appends its tokens, which is how we add the first frame's views as extra context (anchoring).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.utils.torch_utils import randn_tensor

WRITE = "write"
READ = "read"


class RefAttnProcessor:
    """Self-attention that records (write) or also attends to recorded tokens (read)."""

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
        ref_store: dict[str, list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        if self.enabled and ref_mode is not None and ref_store is not None:
            own = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if ref_mode == WRITE:
                ref_store.setdefault(self.name, []).append(own)
            elif ref_mode == READ:
                recorded = ref_store.get(self.name, [])
                if recorded:
                    encoder_hidden_states = torch.cat([own, *[r.to(own.dtype) for r in recorded]], dim=1)
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
    sqrt(sigma^2 + 1)), written without touching the sampling scheduler's step state.
    """
    t = int(round(float(timestep)))
    t = max(0, min(t, alphas_cumprod.shape[0] - 1))
    ac = alphas_cumprod[t].to(device=latents.device, dtype=torch.float32)
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    noisy = ac.sqrt() * latents.float() + (1 - ac).sqrt() * noise
    return noisy.to(latents.dtype)


class RefOnlyUNet:
    """Wraps a UNet: write passes over the reference latent(s), then the read pass over ``sample``.

    ``references`` is a list of clean latents, each with the batch size of ``sample``; each is
    noised to ``timestep`` and written in turn (the condition image, then optional anchors).
    """

    def __init__(self, unet: UNet2DConditionModel, alphas_cumprod: torch.Tensor) -> None:
        install_ref_attention(unet)
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        references: list[torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        store: dict[str, list[torch.Tensor]] = {}
        for ref in references:
            noisy = noise_to_timestep(ref, timestep, self.alphas_cumprod, generator)
            self.unet(
                noisy, timestep, encoder_hidden_states,
                cross_attention_kwargs={"ref_mode": WRITE, "ref_store": store}, return_dict=False,
            )
        return self.unet(
            sample, timestep, encoder_hidden_states,
            cross_attention_kwargs={"ref_mode": READ, "ref_store": store}, return_dict=False,
        )[0]
