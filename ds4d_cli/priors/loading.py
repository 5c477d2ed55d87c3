"""Find and load Zero123++ weights without touching the network.

``model`` is a hub id (looked up in the local Hugging Face cache only) or a folder laid out
like the published model repo (``model_index.json`` + one sub-folder per component), e.g. one
written by ``save_pretrained``. Absent weights raise :class:`MissingWeightsError` whose message
names the model and whose hint says how to get it and which priors work without it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ds4d_cli.errors import Ds4dError, MissingWeightsError
from ds4d_cli.priors.layout import HUB_IDS, check_variant

ALTERNATIVES = "or use `--prior import DIR` (views from another tool) or `--prior none`"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Ds4dError("--device cuda was asked for but no CUDA GPU is available", hint="use --device cpu or auto")
        return torch.device(device)
    raise Ds4dError(f"unknown device {device!r}", hint="use --device auto, cpu or cuda")


def download_command(model: str) -> str:
    """The ``hf download`` line for a hub id: exactly the needed files for the published ones."""
    from ds4d_cli.weights import ZERO123PP

    known = {w.repo_id: w for w in ZERO123PP.values()}
    return known[model].command() if model in known else f"hf download {model}"


def _missing(model: str, why: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"Zero123++ weights {model} {why}",
        hint=(f"on a machine with network run `{download_command(model)}` (older huggingface_hub: "
              f"`huggingface-cli download` with the same arguments) to fill the Hugging Face cache, or pass "
              f"`--model /path/to/folder`; {ALTERNATIVES}"),
    )


def find_weights(model: str | None, variant: str = "v1.1") -> Path:
    """Local folder holding the pipeline for ``model`` (default: the variant's hub id)."""
    model = model or HUB_IDS[check_variant(variant)]
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        if not path.is_dir():
            raise MissingWeightsError(
                f"Zero123++ model folder {path} does not exist",
                hint=f"pass a folder with model_index.json, or a hub id such as {HUB_IDS['v1.1']}; {ALTERNATIVES}",
            )
        if not (path / "model_index.json").is_file():
            raise MissingWeightsError(
                f"{path} is not a diffusers model folder (no model_index.json)",
                hint=f"download it with `{download_command(HUB_IDS[variant])} --local-dir {path}`; {ALTERNATIVES}",
            )
        return path
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=model, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or a malformed cache entry
        raise _missing(model, "are not in the local Hugging Face cache") from None
    return Path(local)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide diffusers/transformers progress bars and advice (accelerate, torchvision) while loading."""
    import diffusers
    import transformers

    d_level = diffusers.utils.logging.get_verbosity()
    t_level = transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers.utils.logging.set_verbosity(d_level)
        transformers.utils.logging.set_verbosity(t_level)
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


def load_zero123pp(model: str | None = None, variant: str = "v1.1", device: str = "auto"):
    """Load our :class:`Zero123PlusPipeline` from the cache or a folder, ready on ``device``.

    fp16 on CUDA, fp32 on CPU. The scheduler is forced to Euler ancestral with v-prediction and
    "trailing" spacing, as Zero123++ is meant to be sampled.
    """
    from diffusers import EulerAncestralDiscreteScheduler

    from ds4d_cli.priors.zero123pp import Zero123PlusPipeline

    folder = find_weights(model, variant)
    dev = resolve_device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    name = model or HUB_IDS[variant]
    with _quiet_loading():
        try:
            pipe = Zero123PlusPipeline.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
        except (OSError, EnvironmentError, ValueError) as exc:
            raise MissingWeightsError(
                f"Zero123++ weights {name} at {folder} are incomplete or unreadable: {str(exc).splitlines()[0]}",
                hint=f"download them again with `{download_command(HUB_IDS[variant])}`; {ALTERNATIVES}",
            ) from None
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction", timestep_spacing="trailing",
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)
