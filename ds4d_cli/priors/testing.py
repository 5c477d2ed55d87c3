"""A tiny, randomly initialised Zero123++ pipeline with the real component classes.

Why: the real weights (~4 GB) cannot be downloaded where tests run, yet the loading path,
the reference attention, the sampler and the grid split must be exercised end to end. This
builds the same classes at toy sizes; its "views" are noise-like but have the right shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from transformers import (
    CLIPImageProcessorPil,

    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from ds4d_cli.priors.zero123pp import Zero123PlusPipeline

_PROMPT_TOKENS = 8
_WIDTH = 16  # text hidden size == vision projection size, as in the real model (1024)


def _tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=_PROMPT_TOKENS)


def build_tiny_zero123pp(scratch: Path, seed: int = 0) -> Zero123PlusPipeline:
    """A Zero123PlusPipeline of toy size (random weights, deterministic for ``seed``)."""
    import torch

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=_WIDTH, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=2,
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215, mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=6, hidden_size=_WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=_PROMPT_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    vision_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=_WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=_WIDTH,
    ))
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", timestep_spacing="trailing",
    )
    clip_proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    vae_proc = CLIPImageProcessorPil(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=0.5, image_std=0.8, resample=2,
    )
    ramp = [round(0.2 + 0.8 * i / (_PROMPT_TOKENS - 1), 4) for i in range(_PROMPT_TOKENS)]
    return Zero123PlusPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_tiny_tokenizer(scratch / "tokenizer_src"), unet=unet,
        scheduler=scheduler, vision_encoder=vision_encoder, feature_extractor_clip=clip_proc,
        feature_extractor_vae=vae_proc, ramping_coefficients=ramp,
    )
