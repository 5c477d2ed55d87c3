"""The pretrained weights ds4d can use but never downloads: which hub repo, which files, and how.

ds4d touches no network. A user fetches these once on a machine that has one, with the Hugging
Face CLI (``hf``, from huggingface_hub); ``ds4d doctor`` and the missing-weights errors print the
command. The file lists are glob patterns over what every published revision holds (configs,
tokenizer, and the weights in whichever format the revision has -- safetensors or bin), so they
fetch neither the READMEs, sample images nor scripts of the repos, nor depend on a revision.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HubWeights:
    repo_id: str
    used_by: str  # the ds4d command that needs them
    patterns: tuple[str, ...]  # glob patterns of the files to download
    local_dir: str | None = None  # where to put them when ds4d takes a folder, not a cached hub id
    note: str = ""

    def command(self) -> str:
        """The ``hf download`` command line that fetches exactly these files."""
        includes = " ".join(f'--include "{p}"' for p in self.patterns)
        where = f" --local-dir {self.local_dir}" if self.local_dir else ""
        return f"hf download {self.repo_id} {includes}{where}"


# A diffusers pipeline folder: model_index.json, one folder per component (config, weights; the
# tokenizer's vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json; the
# scheduler's and both image processors' *_config.json).
_PIPELINE = ("model_index.json", "*/*.json", "tokenizer/merges.txt", "*/*.safetensors", "*/*.bin")

ZERO123PP = {
    "v1.1": HubWeights("sudo-ai/zero123plus-v1.1", "ds4d generate --prior zero123pp (--variant v1.1, the default)",
                       _PIPELINE, note="about 3.9 GB; ds4d reads it from the Hugging Face cache (no flag)"),
    "v1.2": HubWeights("sudo-ai/zero123plus-v1.2", "ds4d generate --prior zero123pp --variant v1.2",
                       _PIPELINE, note="about 5.6 GB; ds4d reads it from the Hugging Face cache (no flag)"),
}

DINOV2_SMALL = HubWeights(
    "facebook/dinov2-small", "ds4d fit --encoder ~/models/dinov2-small", ("config.json", "*.safetensors", "*.bin"),
    local_dir="~/models/dinov2-small", note="under 200 MB; pass the folder to --encoder",
)

ALL = (ZERO123PP["v1.1"], ZERO123PP["v1.2"], DINOV2_SMALL)
