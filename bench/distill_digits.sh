#!/usr/bin/env bash
# Issue 5 experiment on the embedded digits, continuing
# bench/semi_supervised_digits.sh (run that first with the same OUT): the
# 10 %-label fine-tuned teacher of each seed labels the whole train split;
#   * a same-size student (from the pretrained encoder, tau SELF_TEMPERATURE,
#     default 1.0: the paper's 0.1 diverged here) and
#   * a half-width student (random init, tau 1.0)
# learn from it without labels; the half-width network trained supervised on
# the same 10 % labels for as many steps is the baseline.
#   bash bench/distill_digits.sh [OUT] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/semi_digits}
SEEDS=${2:-"0 1 2"}
PY=${PYTHON:-python}
STEPS=${STEPS:-200}
# Runs run.py into DIR unless DIR/result.json exists: run DIR FLAGS...
run() {
  local dir=$1; shift
  [ -f "$dir/result.json" ] || $PY run.py --model_dir="$dir" "$@" > "$dir.log" 2>&1
}
top1() {
  $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['label_top_1_accuracy'], r.get('teacher_label_top_1_accuracy', ''))" "$1/result.json"
}
for seed in $SEEDS; do
  teacher="$OUT/ft0.1_$seed"
  common=(--seed="$seed" --train_steps="$STEPS" --train_batch_size=64
          --checkpoint_steps="$STEPS" --export_at_end=false)
  dir="$OUT/distill_self_$seed"
  run "$dir" --train_mode=distill --teacher_checkpoint="$teacher" \
    --checkpoint="$OUT/pre_$seed" --width_multiplier=0.25 \
    --distill_temperature="${SELF_TEMPERATURE:-1.0}" "${common[@]}"
  echo "seed=$seed student=self top1,teacher=$(top1 "$dir")"
  dir="$OUT/distill_half_$seed"
  run "$dir" --train_mode=distill --teacher_checkpoint="$teacher" \
    --width_multiplier=0.125 --distill_temperature=1.0 "${common[@]}"
  echo "seed=$seed student=half_width top1,teacher=$(top1 "$dir")"
  dir="$OUT/supervised_half_0.1_$seed"
  run "$dir" --train_mode=supervised --label_fraction=0.1 \
    --width_multiplier=0.125 "${common[@]}"
  echo "seed=$seed supervised_half_width_0.1 top1=$(top1 "$dir")"
done
