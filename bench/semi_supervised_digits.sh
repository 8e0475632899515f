#!/usr/bin/env bash
# The README's three-stage commands ("The three stages"), exactly as written
# there apart from --seed and --model_dir, on the embedded digits for several
# seeds, at 10 % and 1 % of the labels:
#   pretrain -> fine-tune -> distill, and supervised from scratch,
# next to logistic regression on the raw pixels of the same labelled subset
# (the pretraining run's probe_<fraction>_raw_pixels_top_1, same seed).
# Prints one line per seed and stage, then the issue-19 acceptance table
# (per seed and median) with each check; logs and result.json files stay in OUT.
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
       "knn=$(get "$pre" knn_top_1_accuracy)" \
       "probe_0.01=$(get "$pre" probe_0.01_pretrained_top_1)" \
       "probe_0.1=$(get "$pre" probe_0.1_pretrained_top_1)"
  for fraction in 0.1 0.01; do
    # 2. Fine-tune, and the same network from scratch on the same labels.
    run "$OUT/ft${fraction}_$seed" --train_mode=finetune --checkpoint="$pre" \
      --label_fraction="$fraction" --seed="$seed"
    run "$OUT/sup${fraction}_$seed" --train_mode=supervised \
      --label_fraction="$fraction" --seed="$seed"
    echo "seed=$seed fraction=$fraction" \
         "finetune=$(get "$OUT/ft${fraction}_$seed" label_top_1_accuracy)" \
         "supervised=$(get "$OUT/sup${fraction}_$seed" label_top_1_accuracy)" \
         "raw_pixels=$(get "$pre" "probe_${fraction}_raw_pixels_top_1")" \
         "num_labels=$(get "$pre" "probe_${fraction}_num_labels")"
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

# The acceptance table of issue 19, from the result.json files above.
$PY - "$OUT" $SEEDS <<'PYEOF'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
def get(run, key):
  return json.load(open(f"{out}/{run}/result.json"))[key]
rows = {}
for seed in seeds:
  for f in ("0.1", "0.01"):
    rows.setdefault(f"fine-tune {f}", []).append(
        get(f"ft{f}_{seed}", "label_top_1_accuracy"))
    rows.setdefault(f"raw pixels {f}", []).append(
        get(f"pre_{seed}", f"probe_{f}_raw_pixels_top_1"))
    rows.setdefault(f"frozen probe {f}", []).append(
        get(f"pre_{seed}", f"probe_{f}_pretrained_top_1"))
    rows.setdefault(f"supervised {f}", []).append(
        get(f"sup{f}_{seed}", "label_top_1_accuracy"))
  rows.setdefault("student", []).append(
      get(f"student_{seed}", "label_top_1_accuracy"))
  rows.setdefault("teacher", []).append(
      get(f"student_{seed}", "teacher_label_top_1_accuracy"))
med = {k: statistics.median(v) for k, v in rows.items()}
for k, v in rows.items():
  print(f"{k:18s} " + " / ".join(f"{x:.3f}" for x in v) +
        f" -- median {med[k]:.3f}")
checks = {
    "fine-tune 10 % >= 0.93": med["fine-tune 0.1"] >= 0.93,
    "fine-tune 1 % >= 0.70": med["fine-tune 0.01"] >= 0.70,
    "fine-tune above raw pixels, every seed and fraction": all(
        a > b for f in ("0.1", "0.01")
        for a, b in zip(rows[f"fine-tune {f}"], rows[f"raw pixels {f}"])),
    "supervised below fine-tune (medians)": all(
        med[f"supervised {f}"] < med[f"fine-tune {f}"] for f in ("0.1", "0.01")),
    "student >= teacher - 0.005 (medians)":
        med["student"] >= med["teacher"] - 0.005,
}
for name, ok in checks.items():
  print(f"{'ok  ' if ok else 'FAIL'} {name}")
PYEOF
