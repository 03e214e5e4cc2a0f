#!/usr/bin/env bash
# Prepares `.gpu/` (git-ignored) for scripts/gpu_check.sh, on a CPU machine with a network:
# the GPU machines this project is lent have no network and no Rust toolchain, PyTorch 2.11 +
# CUDA but no open_clip, and possibly no Vulkan loader.
#
#   PYTHON=/path/to/python-with-pip scripts/gpu_prepare.sh
#
# Writes .gpu/clipstock.xz (the release binary with wgpu, stripped: ~20 MB), .gpu/deb/ (the
# Vulkan loader package) and .gpu/whl/ (open_clip and the pure-Python packages it needs that
# the GPU image lacks). Everything it carries must stay under the device's 64 MiB transfer
# limit together with the tracked files (~26 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OPEN_CLIP=${OPEN_CLIP:-3.3.0}

mkdir -p .gpu/deb .gpu/whl
grep -qx '/.gpu/' .gitignore || echo '/.gpu/' >>.gitignore

echo "== release binary (default features: flex, ndarray, wgpu)"
cargo build --release --locked --bin clipstock
strip -o .gpu/clipstock target/release/clipstock
xz -9 -T0 -f .gpu/clipstock

echo "== Vulkan loader (unpacked on the GPU machine only if it has none)"
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu-apt-lists'
mkdir -p /tmp/gpu-apt-lists/partial
# shellcheck disable=SC2086
apt-get $o update -qq
# shellcheck disable=SC2086
(cd .gpu/deb && rm -f ./*.deb && apt-get $o download libvulkan1)

echo "== open_clip wheels for the GPU image's Python 3.12 (it has torch, torchvision, timm, regex,"
echo "   tqdm, huggingface_hub and safetensors; ftfy and its wcwidth are missing)"
rm -f .gpu/whl/*.whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .gpu/whl \
    "open_clip_torch==$OPEN_CLIP" ftfy wcwidth

du -sh .gpu .gpu/*
echo "ready: run scripts/gpu_check.sh on the device with carry [\".gpu\"]"
