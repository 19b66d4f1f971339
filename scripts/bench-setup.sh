#!/usr/bin/env bash
# Installs the reference implementations the benchmarks compare against, in a
# separate virtualenv (.venv-bench) so the project's own environment stays
# slim: the full CUDA build of torch 2.11.0 (about 3 GB with its NVIDIA
# dependencies; it runs on CPU too), timm, torchvision, onnxruntime.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-bench"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import torch, timm, torchvision, onnxruntime' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    torch==2.11.0 torchvision==0.26.0 timm==1.0.22 onnxruntime==1.30.0 numpy==2.4.6 pillow==12.0.0
fi
echo "bench-setup: ready ($venv)" >&2
