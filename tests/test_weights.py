"""The download instructions for the optional pretrained weights (ds4d doctor, missing-weights
errors): the file patterns select what the loaders need from the published layouts and nothing
else, and the printed command is one the ``hf`` CLI accepts with those patterns."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from ds4d_cli import weights


def _select(root: Path, patterns: tuple[str, ...], dest: Path) -> list[str]:
    """Copy the files of ``root`` that the patterns select (as ``hf download --include`` does)."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    chosen = list(filter_repo_objects(files, allow_patterns=list(patterns)))
    for rel in chosen:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    return chosen


def test_zero123pp_patterns_fetch_a_loadable_pipeline_and_nothing_else(tmp_path: Path) -> None:
    from ds4d_cli.priors.loading import load_zero123pp
    from ds4d_cli.priors.testing import build_tiny_zero123pp

    repo = tmp_path / "repo"
    build_tiny_zero123pp(tmp_path / "scratch").save_pretrained(repo)
    # the tokenizer as the hub repos store it: vocab.json + merges.txt, no tokenizer.json
    (repo / "tokenizer" / "tokenizer.json").unlink()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy2(tmp_path / "scratch" / "tokenizer_src" / name, repo / "tokenizer" / name)
    # what the published repos hold besides the pipeline (v1.1: README.md, inference.py; a v1.2 revision a PNG)
    for junk in ("README.md", "inference.py", "ComfyUI_00034_.png", ".gitattributes"):
        (repo / junk).write_text("x")
    got = _select(repo, weights.ZERO123PP["v1.2"].patterns, tmp_path / "fetched")
    assert not {"README.md", "inference.py", "ComfyUI_00034_.png", ".gitattributes"} & set(got)
    assert "model_index.json" in got and "tokenizer/merges.txt" in got and "unet/config.json" in got
    assert any(f.startswith("unet/diffusion_pytorch_model") for f in got)
    pipe = load_zero123pp(str(tmp_path / "fetched"), device="cpu")
    assert pipe.unet is not None and pipe.tokenizer is not None
    # the weights in the other format (.bin, as an older revision may hold them) are selected too
    assert list(filter_repo_objects(["unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin"],
                                    allow_patterns=list(weights.ZERO123PP["v1.1"].patterns)))


def test_dinov2_patterns_fetch_a_loadable_encoder(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    from ds4d_cli.encoder_weights import load_dinov2
    from ds4d_cli.model.features import DinoEncoder

    repo = tmp_path / "repo"
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)).save_pretrained(repo)
    (repo / "README.md").write_text("x")
    (repo / "preprocessor_config.json").write_text("{}")
    got = _select(repo, weights.DINOV2_SMALL.patterns, tmp_path / "fetched")
    assert "README.md" not in got and "config.json" in got
    enc = DinoEncoder(load_dinov2(tmp_path / "fetched"), image_size=28)
    assert enc.out_dim == 16


def test_commands_are_what_the_hf_cli_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.cli import download as hf_download
    from huggingface_hub.cli.hf import app

    seen: list[dict] = []
    monkeypatch.setattr(hf_download, "snapshot_download", lambda **kw: seen.append(kw) or "/tmp/x")
    for w in weights.ALL:
        argv = shlex.split(w.command())
        assert argv[:3] == ["hf", "download", w.repo_id]
        app(argv[1:], standalone_mode=False)
        assert seen[-1]["repo_id"] == w.repo_id and seen[-1]["allow_patterns"] == list(w.patterns)
        assert seen[-1]["local_dir"] == w.local_dir
    assert len(seen) == len(weights.ALL)


def test_doctor_and_missing_weights_error_name_ids_files_and_commands(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    from ds4d_cli.doctor import weights_lines
    from ds4d_cli.errors import MissingWeightsError
    from ds4d_cli.priors.loading import find_weights

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    lines = [line.strip() for line in weights_lines()]
    text = "\n".join(lines)
    for repo_id in ("sudo-ai/zero123plus-v1.1", "sudo-ai/zero123plus-v1.2", "facebook/dinov2-small"):
        w = next(x for x in weights.ALL if x.repo_id == repo_id)
        assert w.command() in lines, repo_id  # each command on a line of its own, ready to copy
        assert ", ".join(w.patterns) in text
    assert "--encoder" in text and "--variant v1.2" in text
    with pytest.raises(MissingWeightsError) as info:
        find_weights(None, "v1.2")
    assert weights.ZERO123PP["v1.2"].command() in info.value.hint
