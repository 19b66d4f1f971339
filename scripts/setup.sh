#!/usr/bin/env bash
# Installs everything selftrain needs on a fresh machine, with pinned versions.
# Idempotent: a second run checks and returns quickly.
#
#   .venv/                 project-local virtualenv: slim torch 2.11.0 (libtorch
#                          for tch 0.24) and onnxruntime 1.30.0 (the shared
#                          library that ort loads at run time)
#   .deps/libtorch         -> .venv/.../site-packages/torch   (include/ + lib/)
#   .deps/libonnxruntime.so -> .venv/.../onnxruntime/capi/libonnxruntime.so.1.30.0
#
# .cargo/config.toml points LIBTORCH and ORT_DYLIB_PATH at the two .deps links,
# so a plain `cargo build` / `cargo test` works after this script, with no
# hand-set variables. Fashion-MNIST comes from the Debian package
# dataset-fashion-mnist (installed here when missing and we are root).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_VERSION="2.11.0"
CUDA_RUNTIME_PIN="nvidia-cuda-runtime==13.0.96.*"
CUDA_CUPTI_PIN="nvidia-cuda-cupti==13.0.85.*"
ORT_VERSION="1.30.0"
PYTHON="${PYTHON:-python3}"
venv="$root/.venv"

say() { printf 'setup: %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtualenv $venv"
  "$PYTHON" -m venv "$venv"
fi
py="$venv/bin/python"
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

pip_install() {
  "$py" -m pip install --quiet --disable-pip-version-check "$@"
}

# torch: the CUDA 13 wheel is the only one reachable; without its NVIDIA deps
# it still serves CPU use once libcudart/libcupti are present (TOOLCHAIN.md).
if [ ! -f "$site/torch/lib/libtorch_cpu.so" ] || \
   ! grep -qs "^Version: $TORCH_VERSION\$" "$site"/torch-"$TORCH_VERSION".dist-info/METADATA; then
  say "installing torch==$TORCH_VERSION (slim, no NVIDIA stack)"
  pip_install --no-deps "torch==$TORCH_VERSION" "$CUDA_RUNTIME_PIN" "$CUDA_CUPTI_PIN"
fi

ort_lib="$site/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ort_lib" ]; then
  say "installing onnxruntime==$ORT_VERSION"
  pip_install --no-deps "onnxruntime==$ORT_VERSION"
fi

mkdir -p "$root/.deps"
ln -sfn "$site/torch" "$root/.deps/libtorch"
ln -sfn "$ort_lib" "$root/.deps/libonnxruntime.so"

# Python clients used by the tests to read what selftrain writes the way
# users will (polars, pyarrow, onnxruntime's Python API).
if ! "$py" -c 'import polars, pyarrow, numpy, onnxruntime, safetensors' 2>/dev/null; then
  say "installing Python readers for the interop tests"
  pip_install -r "$root/scripts/requirements-readers.txt"
fi

fm_dir="${SELFTRAIN_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
if [ ! -f "$fm_dir/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian package dataset-fashion-mnist"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null
    }
  else
    say "Fashion-MNIST is missing at $fm_dir."
    say "Install it with: sudo apt-get install dataset-fashion-mnist"
    say "or point SELFTRAIN_FASHION_MNIST_DIR at a folder holding the four *-ubyte.gz IDX files."
    exit 1
  fi
fi

say "ready: LIBTORCH=.deps/libtorch ORT_DYLIB_PATH=.deps/libonnxruntime.so data=$fm_dir"
