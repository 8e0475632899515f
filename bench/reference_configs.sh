#!/usr/bin/env bash
# The five configurations the original SimCLR TF2 code was measured on
# (issue 3), each an A/B pair back to back. R18: unfused batch norm (the
# original code's graph) against the fused kernel (same maths, the library
# default). R50: fused kernel, without and with block groups 1-2
# recomputed in the backward pass (same maths, much less memory).
# JSON lines go to OUT (default bench/results/cpu2_<date>.jsonl); the ratio
# lines to standard output. Needs a quiet machine: about 25 minutes on 2 cores.
#   bash bench/reference_configs.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/cpu2_$(date +%Y-%m-%d).jsonl}
PY=${PYTHON:-python}
bench() { $PY bench/bench_train.py --compare=fused_bn=off,on "$@" | tee -a "$OUT"; }
bench_r50() {
  $PY bench/bench_train.py --fused_bn=on --compare=recompute_block_groups=0,2 \
    "$@" | tee -a "$OUT"
}
# Pretrain R18 1x CIFAR stem, 32 px, batch 256, no blur, colour strength 0.5.
bench --stage=pretrain --resnet_depth=18 --image_size=32 --batch_size=256
# Fine-tune R18 1x, 32 px, batch 256.
bench --stage=finetune --resnet_depth=18 --image_size=32 --batch_size=256
# Pretrain R50 1x, 32 px, batch 256.
bench_r50 --stage=pretrain --resnet_depth=50 --image_size=32 --batch_size=256 \
  --steps=2 --warmup_steps=1
# Pretrain R50 1x SK, 32 px, batch 128.
bench_r50 --stage=pretrain --resnet_depth=50 --sk_ratio=0.0625 --image_size=32 \
  --batch_size=128 --steps=2 --warmup_steps=1
# Pretrain R50 1x, 224 px, batch 16, with blur.
bench_r50 --stage=pretrain --resnet_depth=50 --image_size=224 --batch_size=16 \
  --use_blur=on --steps=3 --warmup_steps=2
