#!/usr/bin/env bash
# Idempotent, non-interactive set-up for reslab:
#   - a virtual environment in .venv (inside the repository),
#   - torch 2.13.0 (the CPU build where no NVIDIA GPU is present) and reslab installed into it,
#   - Fashion-MNIST made available (Debian's dataset-fashion-mnist where apt needs no prompt, else the download).
# A second run does no work twice: installs are skipped while pyproject.toml is unchanged, data while it verifies.
#
# Usage: bash scripts/setup.sh [--dev] [--no-data]
#   --dev      also install the development tools (pytest, ruff), the export extra (onnx, onnxruntime, ...) and
#              the tensorboard extra
#   --no-data  skip the Fashion-MNIST step (the tests use synthetic data)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
dev=0
data=1
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --no-data) data=0 ;;
    *) echo "setup.sh: unknown option '$arg' (expected --dev or --no-data)" >&2; exit 2 ;;
  esac
done

say() { echo "[setup] $*"; }

# 1. The virtual environment.
if [ ! -x .venv/bin/python ]; then
  python=${PYTHON:-python3}
  "$python" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null || {
    echo "setup.sh: reslab needs Python 3.10 or newer; '$python' is $("$python" --version 2>&1)." >&2; exit 1; }
  say "creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)

# 2. torch and reslab, once per version of pyproject.toml (and once more for --dev).
extras=""
[ "$dev" = 1 ] && extras="[dev,export,tensorboard]"  # the tests of `reslab export` and `--log tensorboard` need them
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-12)${extras:+-dev}"
if [ ! -e "$stamp" ]; then
  if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = Darwin ]; then
      say "installing torch==$TORCH_VERSION (default build)"
      "${pip[@]}" install "torch==$TORCH_VERSION"
    elif .venv/bin/python -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" 2>/dev/null; then
      # No NVIDIA GPU: the CPU wheel avoids several GB of CUDA libraries that PyPI's Linux wheel pulls in.
      say "installing torch==$TORCH_VERSION (CPU build from $CPU_INDEX)"
      "${pip[@]}" install "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
    else
      # The CPU index is out of reach (an offline mirror, say): take what the configured indexes offer.
      say "$CPU_INDEX is unreachable; installing torch==$TORCH_VERSION from the configured package index"
      "${pip[@]}" install "torch==$TORCH_VERSION"
    fi
  fi
  say "installing reslab${extras} (editable)"
  "${pip[@]}" install -e ".${extras}"
  rm -f .venv/.installed-*
  touch "$stamp"
  [ "$dev" = 1 ] && touch ".venv/.installed-$(sha256sum pyproject.toml | cut -c1-12)"  # --dev covers the plain set-up
fi

# 3. Fashion-MNIST: Debian's package where apt can install it without a prompt (root, or sudo without a password),
#    else reslab's own download into ~/.cache/reslab/fashion-mnist.
if [ "$data" = 1 ] && ! .venv/bin/reslab data --check >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" != 0 ] && sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    say "installing Debian's dataset-fashion-mnist"
    apt_install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }
    apt_install || { $sudo apt-get update -qq >/dev/null 2>&1 && apt_install; } ||
      say "apt-get could not install dataset-fashion-mnist; trying the download"
  fi
  .venv/bin/reslab data   # finds the files, or downloads them into ~/.cache/reslab; says how if offline
fi
say "ready: .venv/bin/reslab --help"
