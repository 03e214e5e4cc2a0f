#!/usr/bin/env bash
# The GPU check of issue 11, for one device call of at most 10 minutes (prepared by
# scripts/gpu_prepare.sh; run from the repository root on the GPU machine, `.gpu` carried):
#
# 1. the ViT-B/32 train step at batch 128 and the eval forward at batch 256, on clipstock's
#    wgpu (f32, then f16: WGSL has no bf16) and on PyTorch CUDA eager (f32, AMP bf16, AMP f16);
# 2. one full quickstart training on wgpu;
# 3. one table of all of it, also written to $OUT/gpu_check.md with the raw logs beside it.
#
# Each step has its own time limit (STEP_LIMIT seconds, default 90, so the six steps fit in one
# 10-minute call) so that a slow or hung step still leaves the table.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
STEP_LIMIT=${STEP_LIMIT:-90}
ITERS=${ITERS:-5}
# Overridable only to rehearse the script on a CPU machine (DEVICE=cpu TORCH_DEVICE=cpu
# TRAIN_BATCH=2 EVAL_BATCH=2 ITERS=1 scripts/gpu_check.sh).
DEVICE=${DEVICE:-wgpu}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
TRAIN_BATCH=${TRAIN_BATCH:-128}
EVAL_BATCH=${EVAL_BATCH:-256}
log() { echo "== $*" | tee -a "$OUT/steps.log"; }

log "setup"
if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in .gpu/deb/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json && -z ${VK_DRIVER_FILES:-} ]]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
"${PYTHON:-python3}" -c 'import open_clip' 2>/dev/null ||
    { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site; }
xz -dc .gpu/clipstock.xz >/tmp/clipstock && chmod +x /tmp/clipstock
BIN=/tmp/clipstock
GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
log "GPU: ${GPU:-unknown}; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

run_step() { # name command...
    local name=$1
    shift
    log "$name"
    timeout "$STEP_LIMIT" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 4 "$OUT/$name.log"
    echo "$name rc=$rc" >>"$OUT/steps.log"
}

for p in f32 f16; do
    run_step "clipstock-wgpu-$p" "$BIN" bench --model ViT-B-32 --device "$DEVICE" --what both \
        --train-batch "$TRAIN_BATCH" --eval-batch "$EVAL_BATCH" --iters "$ITERS" --precision "$p"
done
for p in f32 bf16 f16; do
    run_step "torch-cuda-$p" "${PYTHON:-python3}" scripts/bench_train_torch.py --device "$TORCH_DEVICE" \
        --precision "$p" --what both --threads "$(nproc)" --train-batch "$TRAIN_BATCH" \
        --eval-batch "$EVAL_BATCH" --warmup 2 --iters "$ITERS"
done
run_step "quickstart-wgpu" "$BIN" train --config configs/quickstart.toml \
    --set run.device="$DEVICE" --set run.output_dir=/tmp/gpu-runs --set data.root=/tmp/gpu-data

# One table: clipstock's rows `| device | work | batch | median s/iter | …` and PyTorch's
# `train step (AdamW): batch B, … median X s/step (Y img/s)` lines.
{
    echo "GPU: ${GPU:-unknown}"
    echo
    echo "| side | precision | work | batch | median s | img/s |"
    echo "|---|---|---|---|---|---|"
    for p in f32 f16; do
        awk -F'|' -v p="$p" -v dev="$DEVICE" '$3 ~ /train|eval/ && $5 ~ /[0-9]/ {
            gsub(/^ +| +$/, "", $3); gsub(/ /, "", $4); gsub(/ /, "", $5); gsub(/ /, "", $7)
            printf "| clipstock " dev " | %s | %s | %s | %s | %s |\n", p, $3, $4, $5, $7 }' \
            "$OUT/clipstock-wgpu-$p.log"
    done
    for p in f32 bf16 f16; do
        sed -n "s/^\(train step\|eval forward\)[^:]*: batch \([0-9]*\), .* median \([0-9.]*\) s\/step (\([0-9.]*\) img\/s).*/| PyTorch $TORCH_DEVICE eager | $p | \1 | \2 | \3 | \4 |/p" \
            "$OUT/torch-cuda-$p.log"
    done
    echo
    echo "quickstart on wgpu:"
    grep -E '^\| (merged|run|zero)' "$OUT/quickstart-wgpu.log" || tail -n 3 "$OUT/quickstart-wgpu.log"
    echo
    cat "$OUT/steps.log"
} | tee "$OUT/gpu_check.md"
