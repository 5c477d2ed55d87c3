"""Zero123++ pipeline pieces, loading, grid layout and background segmentation (no real weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ds4d_cli.cameras import orbit_camera
from ds4d_cli.errors import MissingWeightsError
from ds4d_cli.priors.layout import join_grid, split_grid, view_radius, zero123pp_views
from ds4d_cli.priors.loading import load_zero123pp
from ds4d_cli.priors.ref_attention import AnchorCache, RefAttnProcessor, noise_to_timestep
from ds4d_cli.priors.segment import segment_flat_background
from ds4d_cli.priors.testing import build_tiny_zero123pp
from ds4d_cli.priors.zero123pp import (
    Zero123PlusPipeline,
    preprocess_like,
    scale_image,
    scale_latents,
    unscale_image,
    unscale_latents,
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random pipeline written with save_pretrained (the same layout as the hub repo)."""
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_zero123pp(root / "scratch").save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir: Path) -> Zero123PlusPipeline:
    return load_zero123pp(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def cond_image(windmill_dir: Path) -> Image.Image:
    return Image.open(windmill_dir / "input" / "000.png").convert("RGBA")


# -- layout and poses ----------------------------------------------------------------------------
def test_grid_split_is_three_rows_two_columns_row_major() -> None:
    colours = np.arange(6, dtype=np.uint8) * 40
    grid = np.zeros((960, 640, 3), np.uint8)
    for k, c in enumerate(colours):
        r, col = divmod(k, 2)
        grid[r * 320:(r + 1) * 320, col * 320:(col + 1) * 320] = c
    tiles = split_grid(Image.fromarray(grid))
    assert [t.shape for t in tiles] == [(320, 320, 3)] * 6
    assert [int(t[160, 160, 0]) for t in tiles] == colours.tolist()
    assert np.array_equal(join_grid(tiles), grid)
    with pytest.raises(ValueError):
        split_grid(np.zeros((100, 64, 3), np.uint8))


@pytest.mark.parametrize("variant,high,low", [("v1.1", 30.0, -20.0), ("v1.2", 20.0, -10.0)])
def test_view_poses_match_zero123pp_layout(variant: str, high: float, low: float) -> None:
    views = zero123pp_views(variant)
    assert [v["azimuth_deg"] for v in views] == [30, 90, 150, 210, 270, 330]
    assert [v["elevation_deg"] for v in views] == [high, low] * 3
    assert views[1]["name"] == f"az090_el{int(low)}"
    radius = view_radius(variant)
    for v in views:
        c2w = torch.tensor(v["camera_to_world"], dtype=torch.float64)
        centre, forward = c2w[:3, 3], c2w[:3, 2]
        assert torch.isclose(centre.norm(), torch.tensor(radius, dtype=torch.float64))
        assert torch.allclose(forward, -centre / centre.norm(), atol=1e-6)  # looks at the origin
        assert np.degrees(np.arcsin(float(centre[2]) / radius)) == pytest.approx(v["elevation_deg"], abs=1e-6)
        assert torch.allclose(c2w.float(), orbit_camera(v["azimuth_deg"], v["elevation_deg"], radius), atol=1e-5)
        assert v["width"] == v["height"] == 320 and v["K"][0][2] == 160.0
    # azimuth 90 is the camera on +X (our convention: counter-clockwise seen from above)
    assert float(torch.tensor(views[1]["camera_to_world"])[0, 3]) > 0.9 * radius * np.cos(np.radians(low))


def test_scalings_invert() -> None:
    x = torch.linspace(-3, 3, 11)
    assert torch.allclose(unscale_latents(scale_latents(x)), x, atol=1e-6)
    assert torch.allclose(unscale_image(scale_image(x)), x, atol=1e-6)
    assert scale_latents(torch.tensor(0.22)) == 0 and scale_image(torch.tensor(0.8)) == pytest.approx(0.5)


# -- reference attention -------------------------------------------------------------------------
def test_reference_attention_reads_recorded_tokens_and_only_on_self_attention() -> None:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    h, ref = torch.randn(2, 10, 8), torch.randn(2, 7, 8)
    store: dict = {}
    proc = RefAttnProcessor("blk.attn1.processor", enabled=True)
    plain = AttnProcessor2_0()
    proc(attn, ref, ref_mode="write", ref_store=store)
    assert torch.equal(store["blk.attn1.processor"], ref)
    read = proc(attn, h, ref_mode="read", ref_store=store)
    assert torch.allclose(read, plain(attn, h, torch.cat([h, ref], dim=1)), atol=1e-6)
    assert not torch.allclose(read, plain(attn, h), atol=1e-3)
    # recorded tokens identical to the layer's own ones leave self-attention unchanged
    same = proc(attn, h, ref_mode="read", ref_store={"blk.attn1.processor": h})
    assert torch.allclose(same, plain(attn, h), atol=1e-5)
    # a disabled (cross-attention) processor ignores the store
    off = RefAttnProcessor("blk.attn2.processor", enabled=False)
    assert torch.allclose(off(attn, h, ref_mode="read", ref_store=store), plain(attn, h), atol=1e-6)


def test_reference_noise_matches_euler_add_noise_and_scaling() -> None:
    from diffusers import EulerAncestralDiscreteScheduler

    sched = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            prediction_type="v_prediction", timestep_spacing="trailing")
    sched.set_timesteps(10)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = sched.timesteps[3]
    ours = noise_to_timestep(x0, t, sched.alphas_cumprod, torch.Generator().manual_seed(2))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    theirs = sched.scale_model_input(sched.add_noise(x0, eps, t.reshape(1)), t)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_image_preprocessing_matches_clip_image_processor(cond_image: Image.Image) -> None:
    """Equal to transformers' processor to float rounding, on non-square inputs whose resized long
    edge has a fractional part >= 0.5 (transformers truncates it; rounding shifted the crop)."""
    from transformers import CLIPImageProcessorPil

    procs = (CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
             CLIPImageProcessorPil(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96},
                                   image_mean=0.5, image_std=0.8, resample=2))
    rounded_up = 0
    for w, h in ((200, 150), (150, 200), (301, 227), (97, 65), (640, 479)):
        rgb = cond_image.convert("RGB").resize((w, h))
        for proc in procs:
            short = proc.size.shortest_edge
            exact = short * max(w, h) / min(w, h)
            rounded_up += round(exact) > int(exact)
            ref = proc(images=rgb, return_tensors="pt").pixel_values
            ours = preprocess_like(proc, rgb)
            assert ours.shape == ref.shape
            assert (ours - ref).abs().max() < 1e-5, (w, h, short)
    assert rounded_up >= 3, "the sizes must include long edges that rounding and truncation disagree on"


# -- the pipeline, end to end ----------------------------------------------------------------------
def test_tiny_pipeline_loads_and_makes_a_grid_of_six_views(tiny_pipe: Zero123PlusPipeline,
                                                            cond_image: Image.Image) -> None:
    """(320 px views are checked end to end in test_generate; 64 px keeps this one fast.)"""
    assert tiny_pipe.scheduler.config.prediction_type == "v_prediction"
    assert tiny_pipe.scheduler.config.timestep_spacing == "trailing"
    steps: list[int] = []
    out = tiny_pipe(cond_image, num_inference_steps=2, view_size=64, generator=torch.Generator().manual_seed(0),
                    callback=lambda s, n: steps.append(s))
    assert steps == [1, 2]
    grid = out.images[0]
    assert grid.size == (128, 192) and grid.mode == "RGB"
    tiles = split_grid(grid)
    assert len(tiles) == 6 and all(t.shape == (64, 64, 3) for t in tiles)
    assert out.latents.shape == (1, 4, 24, 16)


def test_tiny_pipeline_is_deterministic_and_conditioned(tiny_pipe: Zero123PlusPipeline, cond_image: Image.Image) -> None:
    def run(seed: int, image: Image.Image = cond_image, **kw) -> np.ndarray:
        out = tiny_pipe(image, num_inference_steps=1, view_size=64, generator=torch.Generator().manual_seed(seed), **kw)
        return out.latents.numpy()

    # the seed alone decides: the reference noise and the posterior samples come from the
    # generator, not from the global RNG (which upstream Zero123++ draws them from)
    torch.manual_seed(1234)
    a = run(0)
    torch.manual_seed(99)
    torch.rand(17)
    assert np.array_equal(run(0), a)
    c = run(1)
    assert np.abs(a - c).mean() > 1e-3
    # the condition image changes the result (through reference attention and CLIP embeddings)
    other = Image.fromarray(np.full((256, 256, 4), (200, 30, 30, 255), np.uint8))
    assert np.abs(run(0, other) - a).mean() > 1e-4


def test_condition_latent_is_a_posterior_sample_from_the_generator(tiny_pipe: Zero123PlusPipeline,
                                                                   cond_image: Image.Image) -> None:
    """Upstream samples the VAE posterior (not its mode); so do we, with the sampler's generator."""
    from ds4d_cli.priors.zero123pp import to_rgb_on_grey

    _, lat = tiny_pipe.encode_condition(cond_image, torch.device("cpu"), True, torch.Generator().manual_seed(5))
    x = preprocess_like(tiny_pipe.feature_extractor_vae, to_rgb_on_grey(cond_image))
    with torch.no_grad():
        cond = tiny_pipe.vae.encode(x).latent_dist
        grey = tiny_pipe.vae.encode(torch.zeros_like(x)).latent_dist
    g = torch.Generator().manual_seed(5)
    first, second = cond.sample(generator=g), grey.sample(generator=g)  # condition first, then grey
    assert torch.allclose(lat[1:], first, atol=1e-6) and torch.allclose(lat[:1], second, atol=1e-6)
    assert (lat[1:] - cond.mode()).abs().max() > 1e-3  # a sample, not the mode


# -- STAG4D's temporal anchor, observed on the self-attention inputs ------------------------------
def _attention_probe(unet):
    """Hooks recording, per UNet call, each self-attention layer's query input and key input."""
    log: list[dict[str, dict[str, torch.Tensor]]] = []
    handles = [unet.register_forward_pre_hook(lambda m, a: log.append({}))]
    for name, mod in unet.named_modules():
        if name.endswith("attn1"):
            for role, lin in (("q", mod.to_q), ("k", mod.to_k)):
                handles.append(lin.register_forward_pre_hook(
                    lambda m, a, name=name, role=role: log[-1].setdefault(name, {}).__setitem__(role, a[0].clone())))
    return log, handles


def test_anchor_is_stag4ds_token_mean_in_two_unet_passes(tiny_pipe: Zero123PlusPipeline, cond_image: Image.Image,
                                                         windmill_dir: Path) -> None:
    later = Image.open(windmill_dir / "input" / "003.png")  # 45 deg on (012 is 180: the same picture).convert("RGBA")
    steps = 2
    noise = tiny_pipe.prepare_noise(torch.Generator().manual_seed(0), view_size=64)

    def run(image, anchor):
        out = tiny_pipe(image, num_inference_steps=steps, view_size=64, latents=noise, anchor=anchor,
                        generator=torch.Generator().manual_seed(1))
        return out.latents

    plain0 = run(cond_image, None)
    plain1 = run(later, None)
    log, handles = _attention_probe(tiny_pipe.unet)
    try:
        anchor = AnchorCache()
        frame0 = run(cond_image, anchor)
        n0 = len(log)
        frame1 = run(later, anchor)
    finally:
        for h in handles:
            h.remove()
    # two UNet passes per step (write the condition, read the grid), not three
    assert n0 == 2 * steps and len(log) == 4 * steps
    # frame 0 is sampled exactly as without the anchor; the later frame is changed by it
    assert torch.equal(frame0, plain0)
    assert (frame1 - plain1).abs().max() > 1e-4
    layers = sorted(log[1])
    assert len(layers) >= 2 and anchor.recorded
    differs = 0
    for s in range(steps):
        write0, read0, write1, read1 = log[2 * s], log[2 * s + 1], log[n0 + 2 * s], log[n0 + 2 * s + 1]
        for layer in layers:
            own0, own1 = read0[layer]["q"], read1[layer]["q"]
            L = own0.shape[1]
            # frame 0: keys/values = its own tokens, then the condition's
            assert torch.equal(read0[layer]["k"], torch.cat([own0, write0[layer]["q"]], dim=1))
            # later frame: own tokens -> mean of frame 0's (same step, layer) and its own; queries keep
            # its own; condition tokens untouched
            k1 = read1[layer]["k"]
            assert torch.allclose(k1[:, :L], (own0 + own1) / 2, atol=1e-6, rtol=0)
            differs += not torch.allclose(own0, own1, atol=1e-4)  # else the mean proves nothing
            assert torch.equal(k1[:, L:], write1[layer]["q"])
            assert torch.equal(anchor.tokens[(s, layer + ".processor")], own0)
    # the frames' own tokens differ in most layers (the first one sees the shared noise at step 0)
    assert differs >= steps * len(layers) - 1


def test_anchor_refuses_a_frame_sampled_differently(tiny_pipe: Zero123PlusPipeline, cond_image: Image.Image) -> None:
    anchor = AnchorCache(device="cpu")
    tiny_pipe(cond_image, num_inference_steps=1, view_size=64, anchor=anchor, generator=torch.Generator().manual_seed(0))
    assert anchor.recorded and anchor.nbytes > 0 and all(t.device.type == "cpu" for t in anchor.tokens.values())
    with pytest.raises(ValueError, match="denoising steps"):
        tiny_pipe(cond_image, num_inference_steps=2, view_size=64, anchor=anchor)
    with pytest.raises(ValueError, match="same settings"):  # no guidance: batch 1 instead of 2
        tiny_pipe(cond_image, num_inference_steps=1, guidance_scale=1.0, view_size=64, anchor=anchor)


def test_folder_with_the_published_model_index_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The hub repo names the custom pipeline and stock processor classes and a null safety checker."""
    import shutil

    folder = tmp_path / "published"
    shutil.copytree(tiny_model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update({
        "_class_name": ["pipeline", "Zero123PlusPipeline"],
        "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
        "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    })
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = load_zero123pp(str(folder), device="cpu")
    assert isinstance(pipe, Zero123PlusPipeline)
    assert pipe.config.ramping_coefficients == index["ramping_coefficients"]


def test_missing_weights_error_names_model_and_alternatives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as info:
        load_zero123pp(None, variant="v1.2", device="cpu")
    err = info.value
    assert "sudo-ai/zero123plus-v1.2" in err.message and "\n" not in str(err)
    assert "hf download sudo-ai/zero123plus-v1.2" in err.hint
    assert "--model" in err.hint and "--prior import" in err.hint and "--prior none" in err.hint
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_zero123pp(str(tmp_path / "nope"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="model_index.json"):
        load_zero123pp(str(tmp_path / "empty"), device="cpu")


def test_incomplete_model_folder_is_a_missing_weights_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(MissingWeightsError, match="incomplete"):
        load_zero123pp(str(folder), device="cpu")


# -- segmentation ----------------------------------------------------------------------------------
def test_grey_background_segmentation_recovers_the_mask(windmill_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for view in ("az090", "az180", "az045_el30"):
        rgba = np.asarray(Image.open(windmill_dir / "gt" / view / "000.png")).astype(np.float32)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + 127.0 * (1 - alpha) + rng.normal(0, 2.0, rgba[..., :3].shape)
        rgb[5:8, 5:8] = 255.0  # a speck of sampling noise in the background
        out = segment_flat_background(np.clip(rgb, 0, 255).astype(np.uint8))
        truth, found = alpha[..., 0] > 0.5, out[..., 3] > 127
        iou = (truth & found).sum() / (truth | found).sum()
        assert iou > 0.93, (view, iou)
        assert out[6, 6, 3] == 0  # the speck is dropped
        assert np.array_equal(out[..., :3], np.clip(rgb, 0, 255).astype(np.uint8))


def test_flat_image_has_no_foreground() -> None:
    out = segment_flat_background(np.full((64, 64, 3), 128, np.uint8))
    assert out.shape == (64, 64, 4) and out[..., 3].max() == 0
