#!/usr/bin/env bash
# clipstock against PyTorch (open_clip) on this machine, side by side: the ViT-B/32 train step
# at batch 8 and 32 and the eval forward at batch 32, each side run alternately ROUNDS times
# (one process per row, so each row's peak RSS is its own), then one table with the medians,
# the ratio (PyTorch s / clipstock s: above 1 means clipstock is faster), and the per-step
# fixed cost from the batch-8/batch-32 fit.
#
#   PYTHON=/path/to/venv/bin/python scripts/bench_vs_torch.sh [ITERS] [ROUNDS]
#
# PYTHON needs torch and open_clip_torch (scripts/requirements-parity.txt); the clipstock
# binary is target/release/clipstock (built if missing). THREADS (default 2) is given to both.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
ITERS=${1:-5}
ROUNDS=${2:-2}
THREADS=${THREADS:-2}
MODEL=ViT-B-32
BIN=target/release/clipstock

if [[ ! -x $BIN ]]; then
    cargo build --release --bin clipstock
fi
"$PYTHON" -c "import torch, open_clip" 2>/dev/null || {
    echo "error: $PYTHON cannot import torch and open_clip (set PYTHON to a venv that has them)" >&2
    exit 2
}

# The rows: what batch. `clipstock bench` times its train row at --train-batch and its eval
# row at --eval-batch.
ROWS=("train 8" "train 32" "eval 32")

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

# Medians are read from each side's own output: clipstock's table row
# `| device | work | batch | median s/iter | …` and PyTorch's `…: batch B, … median X s/step`.
clipstock_median() { # file work
    awk -F'|' -v w="$2" '$3 ~ w && $5 ~ /[0-9]/ { gsub(/ /, "", $5); print $5; exit }' "$1"
}
torch_median() { # file
    sed -n 's/.* median \([0-9.]*\) s\/step.*/\1/p' "$1" | head -n 1
}

for round in $(seq 1 "$ROUNDS"); do
    for row in "${ROWS[@]}"; do
        read -r what batch <<<"$row"
        tag="$what-$batch-$round"
        "$PYTHON" scripts/bench_train_torch.py --model "$MODEL" --what "$what" --threads "$THREADS" \
            --train-batch "$batch" --eval-batch "$batch" --iters "$ITERS" >"$log/torch-$tag" 2>&1
        RAYON_NUM_THREADS=$THREADS "$BIN" bench --model "$MODEL" --device cpu --what "$what" \
            --train-batch "$batch" --eval-batch "$batch" --iters "$ITERS" >"$log/clip-$tag" 2>&1
        printf 'round %s %-5s batch %-3s torch %s s, clipstock %s s\n' "$round" "$what" "$batch" \
            "$(torch_median "$log/torch-$tag")" \
            "$(clipstock_median "$log/clip-$tag" "$( [[ $what == train ]] && echo 'train step' || echo 'eval forward')")" >&2
    done
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
avx512=no
grep -qw avx512f /proc/cpuinfo && avx512=yes
echo
echo "CPU: $cpu (AVX-512: $avx512), $THREADS threads, load average now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "torch: $(grep -m1 '^torch ' "$log"/torch-train-8-1 | cut -d, -f1-2)"
echo
echo "| work | batch | clipstock median s (per round) | PyTorch median s (per round) | PyTorch s / clipstock s |"
echo "|---|---|---|---|---|"
declare -A CLIP TORCH
for row in "${ROWS[@]}"; do
    read -r what batch <<<"$row"
    work=$([[ $what == train ]] && echo 'train step' || echo 'eval forward')
    c=() t=()
    for round in $(seq 1 "$ROUNDS"); do
        c+=("$(clipstock_median "$log/clip-$what-$batch-$round" "$work")")
        t+=("$(torch_median "$log/torch-$what-$batch-$round")")
    done
    cm=$(printf '%s\n' "${c[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    tm=$(printf '%s\n' "${t[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    CLIP[$what$batch]=$cm
    TORCH[$what$batch]=$tm
    ratio=$(awk -v c="$cm" -v t="$tm" 'BEGIN { if (c > 0) printf "%.2f×", t / c; else print "?" }')
    echo "| $work | $batch | $cm (${c[*]}) | $tm (${t[*]}) | **$ratio** |"
done
echo
# t(B) = fixed + B · per_image, solved from the two train rows.
awk -v c8="${CLIP[train8]}" -v c32="${CLIP[train32]}" -v t8="${TORCH[train8]}" -v t32="${TORCH[train32]}" 'BEGIN {
    cp = (c32 - c8) / 24; cf = c8 - 8 * cp
    tp = (t32 - t8) / 24; tf = t8 - 8 * tp
    printf "train step fit t = fixed + batch × per-image: clipstock %.3f s + %.4f s/img, PyTorch %.3f s + %.4f s/img\n", cf, cp, tf, tp
}'
