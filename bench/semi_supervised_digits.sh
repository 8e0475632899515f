#!/usr/bin/env bash
# The README's three-stage commands ("The three stages"), exactly as written
# there apart from --seed and --model_dir, on the embedded digits for several
# seeds, at 10 % and 1 % of the labels:
#   pretrain -> fine-tune -> distill, and supervised from scratch,
# next to logistic regression on the raw pixels of the same labelled subset
# (the pretraining run's probe_<fraction>_raw_pixels_top_1, same seed).
# Prints one line per seed and stage; logs and result.json files stay in OUT.
#   bash bench/semi_supervised_digits.sh [OUT] [SEEDS]
# PARALLEL=1 runs the seeds side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/semi_digits}
SEEDS=${2:-"0 1 2"}
PY=${PYTHON:-python}
mkdir -p "$OUT"

# Runs run.py into DIR unless DIR/result.json exists: run DIR FLAGS...
run() {
  local dir=$1; shift
  [ -f "$dir/result.json" ] || $PY run.py "$@" --model_dir="$dir" \
    > "$dir.log" 2>&1
}
get() {  # get DIR KEY
  $PY -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" \
    "$1/result.json" "$2"
}

one_seed() {
  local seed=$1 pre="$OUT/pre_$seed" start
  start=$(date +%s)
  # 1. Task-agnostic pretraining (the main command).
  run "$pre" --mode=train_then_eval --train_mode=pretrain --seed="$seed"
  echo "seed=$seed pretrain linear_eval=$(get "$pre" label_top_1_accuracy)" \
       "knn=$(get "$pre" knn_top_1_accuracy)"
  for fraction in 0.1 0.01; do
    # 2. Fine-tune, and the same network from scratch on the same labels.
    run "$OUT/ft${fraction}_$seed" --train_mode=finetune --checkpoint="$pre" \
      --label_fraction="$fraction" --seed="$seed"
    run "$OUT/sup${fraction}_$seed" --train_mode=supervised \
      --label_fraction="$fraction" --seed="$seed"
    echo "seed=$seed fraction=$fraction" \
         "finetune=$(get "$OUT/ft${fraction}_$seed" label_top_1_accuracy)" \
         "supervised=$(get "$OUT/sup${fraction}_$seed" label_top_1_accuracy)" \
         "raw_pixels=$(get "$pre" "probe_${fraction}_raw_pixels_top_1")"
  done
  # 3. Distill the 10 % teacher into a student on the unlabelled images.
  run "$OUT/student_$seed" --train_mode=distill \
    --teacher_checkpoint="$OUT/ft0.1_$seed" --checkpoint="$OUT/ft0.1_$seed" \
    --distill_temperature=1.0 --seed="$seed"
  echo "seed=$seed distill student=$(get "$OUT/student_$seed" label_top_1_accuracy)" \
       "teacher=$(get "$OUT/student_$seed" teacher_label_top_1_accuracy)" \
       "seconds=$(( $(date +%s) - start ))"
}

if [ "${PARALLEL:-0}" = 1 ]; then
  for seed in $SEEDS; do one_seed "$seed" > "$OUT/seed_$seed.txt" 2>&1 & done
  wait
  cat "$OUT"/seed_*.txt
else
  for seed in $SEEDS; do one_seed "$seed"; done
fi
