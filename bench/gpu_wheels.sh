#!/usr/bin/env bash
# Step 1 of `make gpu-check`, on a machine that reaches PyPI: download the wheels that
# bench/gpu_check.py needs beside a CUDA build of torch, for CPython 3.12 on x86_64 Linux, into
# DIR (default .whl). No dependency resolution (--no-deps): the list below is the closure of what
# the check imports, minus torch and what torch itself installs (filelock, fsspec, jinja2,
# MarkupSafe, networkx, sympy, mpmath, typing_extensions, setuptools), at the versions this
# repository pins or its venv resolved (pyproject.toml, `pip freeze` of `make setup`).
#
# Sets (GPU_WHEELS=...):
#   bare    (default) everything, for a machine with torch alone: 60 MB, which with the working
#           tree (1.3 MB) and .gpucheck/ (1.3 MB) stays inside the 64 MiB one device call carries;
#           `bench/gpu_check.py --dry-run --simulate-bare` proves the list complete;
#   device  gsplat's and the fit's runtime + diffusers (40 MB): for an image that already has
#           transformers, huggingface_hub and tokenizers (this workplace's has, at other versions);
#   core    gsplat's and the fit's runtime only (32 MB): the Zero123++ check is then skipped
#           unless the machine has diffusers and transformers.
# hf-xet, scipy and onnxruntime are left out: nothing the check runs needs them.
set -euo pipefail
DIR=${1:-.whl}
SET=${GPU_WHEELS:-bare}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
CORE=(
  gsplat==1.5.3 jaxtyping==0.3.11 wadler-lindig==0.1.8 ninja==1.13.2
  rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
  numpy==2.4.6 pillow==13.0.0 pytorch-msssim==1.0.0
)
PRIOR=(diffusers==0.42.1 importlib-metadata==10.2.0 zipp==4.1.2 regex==2026.11.19 safetensors==0.8.0)
BARE=(
  transformers==5.24.0 huggingface_hub==2.4.0 tokenizers==0.23.3 pyyaml==6.0.4 tqdm==4.70.1
  packaging==26.4 requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1
  charset-normalizer==3.5.3 httpx2==2.16.2 httpcore2==2.16.2 anyio==4.16.0 h11==0.16.0
  truststore==0.10.5 typer==0.29.2 click==8.5.1 shellingham==1.5.4
)
case "$SET" in
  core) PKGS=("${CORE[@]}") ;;
  device) PKGS=("${CORE[@]}" "${PRIOR[@]}") ;;
  bare) PKGS=("${CORE[@]}" "${PRIOR[@]}" "${BARE[@]}") ;;
  *) echo "GPU_WHEELS must be core, device or bare (got $SET)" >&2; exit 2 ;;
esac
mkdir -p "$DIR"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
  -d "$DIR" "${PKGS[@]}"
echo "gpu-check wheels ($SET): $(ls "$DIR"/*.whl | wc -l) files, $(du -sh "$DIR" | cut -f1) in $DIR"
