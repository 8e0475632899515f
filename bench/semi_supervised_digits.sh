#!/usr/bin/env bash
# Issue 4 experiment on the embedded digits: pretrain -> fine-tune (from the
# first projection layer) against supervised training from scratch, on the
# same 1 % / 10 % labels and the same number of steps, for several seeds.
# Prints one line per run; results.json files stay under OUT.
#   bash bench/semi_supervised_digits.sh [OUT] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/semi_digits}
SEEDS=${2:-"0 1 2"}
PY=${PYTHON:-python}
STEPS=${STEPS:-60}
for seed in $SEEDS; do
  $PY run.py --seed="$seed" --model_dir="$OUT/pre_$seed" --export_at_end=false \
    > "$OUT.pre_$seed.log" 2>&1
  for fraction in 0.01 0.1; do
    for mode in finetune supervised; do
      extra=()
      if [ "$mode" = finetune ]; then
        extra=(--checkpoint="$OUT/pre_$seed" --ft_proj_selector=1)
      fi
      dir="$OUT/${mode}_${fraction}_$seed"
      $PY run.py --train_mode="$mode" --seed="$seed" --label_fraction="$fraction" \
        --train_steps="$STEPS" --train_batch_size=64 --checkpoint_steps="$STEPS" \
        --export_at_end=false --model_dir="$dir" "${extra[@]}" > "$dir.log" 2>&1
      top1=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['label_top_1_accuracy'])" "$dir/result.json")
      echo "seed=$seed fraction=$fraction mode=$mode top1=$top1"
    done
  done
done
