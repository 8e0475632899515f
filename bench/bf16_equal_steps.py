"""Does --precision=mixed_bfloat16 train like float32 at equal steps?

  python bench/bf16_equal_steps.py --data_dir=PATH/cifar10 [--out=FILE.jsonl]
  # a tiny smoke run:
  python bench/bf16_equal_steps.py --data_dir=PATH/cifar10 --train_steps=4 \
      --batch_size=8 --width_multiplier=0.0625 --image_size=16 \
      --train_per_class=16 --test_per_class=8 --window=2 --steps_per_loop=1

Three pretraining runs of `run.py` (`--train_mode=pretrain
--mode=train_then_eval`), one process at a time, with one fixed recipe given
by this script's flags (defaults: ResNet-18 1x, 32 px, batch 256, 300 steps,
LARS at 1.0, temperature 0.5, colour strength 0.5, no blur, flips, crops down
to 8 %): float32 seed 0, mixed_bfloat16 seed 0, float32 seed 1. The seed sets
data order, augmentation and initialisation, so the two seed-0 runs differ in
precision only, and the float32 seed-1 run is the noise baseline.

Compared, from each run's model_dir: the contrastive loss and accuracy
(TensorBoard tags `train/contrast_loss`, `train/contrast_acc`) averaged over
windows of `--window` steps (the last window is the end of training), and the
linear-eval top-1 (`label_top_1_accuracy` in result.json: the stop-gradient
linear head trained during pretraining, evaluated on the eval split).

A metric is within noise when |bf16 s0 - fp32 s0| <= max(|fp32 s1 - fp32 s0|,
floor). One seed pair can differ by chance very little, so the floor is one
standard error of the difference between two independent measurements of the
metric, estimated from the runs themselves:

* a window mean of k per-loop means (each loop's mean is one summary point):
  sqrt(2) * s / sqrt(k), with s the point-to-point scatter estimated from
  successive differences, s^2 = sum((x[i+1] - x[i])^2) / (2 (k - 1)), which
  a smooth trend (the falling loss) barely inflates; s is pooled over the two
  float32 runs;
* a top-1 accuracy p on n eval images: sqrt(2 p (1 - p) / n), the binomial
  error of the difference.

The issue's target for the linear-eval top-1 (within 1 point of float32) is
checked on its own line. Printed: the CPU model and whether it has
avx512_bf16 / amx_bf16 (bfloat16 matmuls and convolutions are emulated in
float32 without them), one line per run with its wall time, and the table;
every run record, table row and the verdict go to `--out` as JSON lines.

`--resume` with `--work_dir` continues an interrupted comparison: a run that
finished there earlier with the same command (kept next to its log as
`<run>.command.json`) is read instead of rerun.

`--train_per_class` / `--test_per_class` shrink the data (run.py has no flag
for a part of an image folder's split): the first N files of each class, in
sorted order, are symlinked into a folder under the work directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from side_by_side import cpu_description  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

LOSS_TAG = "train/contrast_loss"
ACC_TAG = "train/contrast_acc"
TOP_1 = "label_top_1_accuracy"
# tf_simclr's image folder reads these extensions (sources.IMAGE_EXTENSIONS).
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# (name, precision, seed): the two seed-0 runs differ in precision only.
RUNS = (("float32_s0", "float32", 0), ("bf16_s0", "mixed_bfloat16", 0),
        ("float32_s1", "float32", 1))
# The target: linear-eval top-1 within 1 point of float32.
TOP_1_TARGET = 0.01


# ----------------------------------------------------------------------------
# Data


def count_images(split_dir: str) -> int:
  """Image files in `split_dir/<class>/`, as tf_simclr's image folder lists
  them (by extension; hidden class folders are skipped)."""
  total = 0
  for name in sorted(os.listdir(split_dir)):
    class_dir = os.path.join(split_dir, name)
    if name.startswith(".") or not os.path.isdir(class_dir):
      continue
    total += sum(1 for f in os.listdir(class_dir)
                 if f.lower().endswith(_IMAGE_EXTENSIONS))
  return total


def subset_folder(root: str, target: str,
                  per_class: Mapping[str, int]) -> str:
  """Symlinks the first N images of each class of some splits of `root`.

  Args:
    root: an image folder `root/<split>/<class>/*.jpg`.
    target: the folder to create (must not exist yet).
    per_class: images per class for each split; 0 links the whole split
      folder.

  Returns:
    `target`, an image folder holding the splits of `per_class`.
  """
  os.makedirs(target)
  for split, count in per_class.items():
    source = os.path.join(root, split)
    if not os.path.isdir(source):
      raise ValueError(f"data_dir {root!r} has no split folder {split!r}")
    if count < 0:
      raise ValueError(f"images per class of split {split!r} must be >= 0, "
                       f"got {count}")
    if count == 0:
      os.symlink(os.path.abspath(source), os.path.join(target, split))
      continue
    for name in sorted(os.listdir(source)):
      class_dir = os.path.join(source, name)
      if name.startswith(".") or not os.path.isdir(class_dir):
        continue
      os.makedirs(os.path.join(target, split, name))
      files = sorted(f for f in os.listdir(class_dir)
                     if f.lower().endswith(_IMAGE_EXTENSIONS))[:count]
      for f in files:
        os.symlink(os.path.abspath(os.path.join(class_dir, f)),
                   os.path.join(target, split, name, f))
  return target


# ----------------------------------------------------------------------------
# Reading a run


def read_scalars(directory: str) -> dict[str, dict[int, float]]:
  """Every scalar in the TensorBoard event files of `directory`.

  Returns:
    {tag: {step: value}}; a step written twice (a resumed run) keeps the
    value of the later file.
  """
  # Imported here: the driver stays free of TensorFlow while runs train.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  scalars: dict[str, dict[int, float]] = {}
  for path in sorted(tf.io.gfile.glob(
      os.path.join(directory, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        # TF2's tf.summary.scalar writes a tensor; TF1 wrote simple_value.
        # Other summaries (images, histograms, text) are not scalars.
        if value.HasField("tensor"):
          array = tf.make_ndarray(value.tensor)
          if array.shape != () or array.dtype.kind not in "fiu":
            continue
          number = float(array)
        elif value.HasField("simple_value"):
          number = float(value.simple_value)
        else:
          continue
        scalars.setdefault(value.tag, {})[int(event.step)] = number
  return scalars


def window_stats(points: Mapping[int, float], window: int) -> list[dict]:
  """Means of per-loop summary points over windows of `window` steps.

  Each point (step s, value v) is the mean over the loop ending at step s,
  so it covers the steps since the previous point; a window's mean weights
  points by those step counts. A point belongs to the window holding its
  last step, so windows should be multiples of the loop length.

  Args:
    points: {step: value} of one tag.
    window: window length in steps.

  Returns:
    One dict per window in step order: `start`, `end` (steps (start, end]),
    `mean`, `k` (points), `scatter` (successive-difference estimate of the
    per-point standard deviation; None with fewer than two points).
  """
  if window <= 0:
    raise ValueError(f"window must be > 0, got {window}")
  groups: dict[int, list[tuple[int, float]]] = {}
  previous = 0
  for step in sorted(points):
    groups.setdefault((step - 1) // window, []).append(
        (step - previous, points[step]))
    previous = step
  result = []
  for index in sorted(groups):
    pairs = groups[index]
    weight = sum(n for n, _ in pairs)
    values = [v for _, v in pairs]
    scatter = None
    if len(values) >= 2:
      scatter = math.sqrt(sum((b - a) ** 2 for a, b in zip(values, values[1:]))
                          / (2 * (len(values) - 1)))
    last = index * window + window
    result.append({"start": index * window,
                   "end": min(last, max(points)),
                   "mean": sum(n * v for n, v in pairs) / weight,
                   "k": len(values), "scatter": scatter})
  return result


def steady_step_seconds(images_per_second: Mapping[int, float],
                        batch_size: int) -> Optional[float]:
  """Median seconds per step over the loops after the first.

  Args:
    images_per_second: {step: value} of `train/images_per_second`, one point
      per loop (its steps x batch / its seconds).
    batch_size: the global batch.

  Returns:
    The median, or None with fewer than two loops. The first loop holds
    tracing and the input pipeline's start, so it is left out.
  """
  seconds, previous = [], 0
  for step in sorted(images_per_second):
    if previous and images_per_second[step] > 0:
      seconds.append(batch_size / images_per_second[step])
    previous = step
  return statistics.median(seconds) if seconds else None


def pooled_scatter(*scatters: Optional[float]) -> Optional[float]:
  """Root mean square of the known scatters (None when none is known)."""
  known = [s for s in scatters if s is not None]
  if not known:
    return None
  return math.sqrt(sum(s * s for s in known) / len(known))


def window_floor(scatter: Optional[float], k: int) -> float:
  """Standard error of the difference of two k-point means (0 if unknown)."""
  if scatter is None or k <= 0:
    return 0.0
  return math.sqrt(2.0) * scatter / math.sqrt(k)


def accuracy_floor(p: float, n: int) -> float:
  """Standard error of the difference of two accuracies p on n examples."""
  if n <= 0:
    return 0.0
  return math.sqrt(2.0 * p * (1.0 - p) / n)


def compare(reference: float, candidate: float, baseline: float,
            floor: float) -> dict:
  """The within-noise test of one metric.

  Args:
    reference: float32 seed 0.
    candidate: bfloat16 seed 0.
    baseline: float32 seed 1.
    floor: smallest noise accepted (see the module docstring).

  Returns:
    `difference` |candidate - reference|, `seed_difference`
    |baseline - reference|, `noise` (the larger of that and `floor`) and
    `within`.
  """
  if floor < 0:
    raise ValueError(f"floor must be >= 0, got {floor}")
  difference = abs(candidate - reference)
  seed_difference = abs(baseline - reference)
  noise = max(seed_difference, floor)
  return {"difference": difference, "seed_difference": seed_difference,
          "floor": floor, "noise": noise, "within": difference <= noise}


def comparison_rows(runs: Mapping[str, dict], window: int) -> list[dict]:
  """Table rows: each metric of every window, then the linear-eval top-1.

  Args:
    runs: by name in RUNS, each with `scalars` (read_scalars of its train
      summaries), `result` (its result.json) and `eval_examples`.
    window: window length in steps.
  """
  ref, cand, base = (runs[name] for name, _, _ in RUNS)
  rows = []
  for tag, label in ((LOSS_TAG, "contrast loss"), (ACC_TAG, "contrast acc")):
    stats = [window_stats(run["scalars"].get(tag, {}), window)
             for run in (ref, cand, base)]
    if not all(stats):
      missing = [name for (name, _, _), s in zip(RUNS, stats) if not s]
      raise ValueError(f"tag {tag!r} missing from the train summaries of "
                       f"{missing}")
    if len({len(s) for s in stats}) != 1:
      raise ValueError(f"tag {tag!r}: the runs have different numbers of "
                       f"windows {[len(s) for s in stats]}")
    for i, (r, c, b) in enumerate(zip(*stats)):
      scatter = pooled_scatter(r["scatter"], b["scatter"])
      row = {"metric": label, "tag": tag,
             "steps": f"{r['start']}-{r['end']}"
                      + (" (last)" if i == len(stats[0]) - 1 else ""),
             "float32_s0": r["mean"], "bf16_s0": c["mean"],
             "float32_s1": b["mean"]}
      row.update(compare(r["mean"], c["mean"], b["mean"],
                         window_floor(scatter, r["k"])))
      rows.append(row)
  values = [run["result"].get(TOP_1) for run in (ref, cand, base)]
  if any(v is None for v in values):
    raise ValueError(f"{TOP_1!r} missing from result.json of "
                     f"{[n for (n, _, _), v in zip(RUNS, values) if v is None]}")
  row = {"metric": "linear-eval top-1", "tag": TOP_1, "steps": "end",
         "float32_s0": values[0], "bf16_s0": values[1],
         "float32_s1": values[2]}
  row.update(compare(*values, accuracy_floor(values[0], ref["eval_examples"])))
  row["target"] = TOP_1_TARGET
  row["within_target"] = row["difference"] <= TOP_1_TARGET
  rows.append(row)
  return rows


def format_table(rows: Sequence[dict]) -> str:
  """A Markdown table of `comparison_rows`; "(floor)" marks a noise that is
  the floor rather than the seed difference."""
  lines = ["| metric | steps | float32 s0 | bf16 s0 | float32 s1 | "
           "\\|bf16-fp32\\| | noise | within? |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    floor_used = r["noise"] > r["seed_difference"]
    lines.append(
        f"| {r['metric']} | {r['steps']} | {r['float32_s0']:.4f} | "
        f"{r['bf16_s0']:.4f} | {r['float32_s1']:.4f} | "
        f"{r['difference']:.4f} | {r['noise']:.4f}"
        f"{' (floor)' if floor_used else ''} | "
        f"{'yes' if r['within'] else '**no**'} |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Running


def warmup_epochs(warmup_steps: int, num_train: int, batch_size: int) -> float:
  """The --warmup_epochs that run.py floors to exactly `warmup_steps`."""
  # run.py takes epochs: floor(epochs * N / B). Half a step more keeps
  # rounding error from flooring one step short.
  if warmup_steps <= 0:
    return 0.0
  return (warmup_steps + 0.5) * batch_size / num_train


def run_py_flags(args, data_dir: str, num_train: int, precision: str,
                 seed: int, model_dir: str) -> list[str]:
  """Every flag of the recipe, explicit, so no preset default changes it.

  Args:
    args: this script's parsed flags (the recipe).
    data_dir: the image folder to train and evaluate on.
    num_train: its training images (for the warm-up in epochs).
    precision: run.py's --precision.
    seed: run.py's --seed (data order, augmentation and initialisation).
    model_dir: where the run writes checkpoints, summaries and result.json.
  """
  warmup = int(round(args.warmup_fraction * args.train_steps))
  return [
      "--preset=cifar10_simclr", "--train_mode=pretrain",
      "--mode=train_then_eval", "--dataset=image_folder",
      f"--data_dir={data_dir}", "--train_split=train", "--eval_split=test",
      f"--model_dir={model_dir}", f"--precision={precision}", f"--seed={seed}",
      # Model.
      f"--resnet_depth={args.resnet_depth}",
      f"--width_multiplier={args.width_multiplier:g}", "--sk_ratio=0",
      "--se_ratio=0", "--stem=auto", "--shortcut=auto",
      f"--image_size={args.image_size}", "--pretrain_image_size=0",
      "--proj_head_mode=nonlinear", "--num_proj_layers=3",
      "--proj_out_dim=128", "--ft_proj_selector=0", "--batch_norm_decay=0.9",
      "--global_bn", "--nofused_batch_norm", "--recompute_block_groups=0",
      "--lineareval_while_pretraining",
      # Loss and augmentation.
      f"--temperature={args.temperature:g}", "--hidden_norm",
      "--memory_size=0", f"--color_jitter_strength={args.color_jitter_strength:g}",
      "--nouse_blur", "--horizontal_flip",
      f"--min_crop_area={args.min_crop_area:g}",
      # Optimiser and length.
      "--optimizer=lars", f"--learning_rate={args.learning_rate:g}",
      "--learning_rate_scaling=linear", "--momentum=0.9",
      f"--weight_decay={args.weight_decay:g}",
      f"--warmup_epochs={warmup_epochs(warmup, num_train, args.batch_size)!r}",
      f"--train_batch_size={args.batch_size}",
      f"--train_steps={args.train_steps}", "--min_train_steps=0",
      # Loops as short as the summaries need; one checkpoint at the end.
      f"--steps_per_loop={args.steps_per_loop}",
      f"--checkpoint_steps={args.train_steps}", "--keep_checkpoint_max=1",
      "--nojit_compile", "--distribution=one_device",
      # Evaluation: the linear-eval head only (no k-NN, probes or export).
      f"--eval_batch_size={args.eval_batch_size}", "--eval_steps=0",
      "--noknn_eval", "--probe_label_fractions=", "--noexport_at_end",
  ]


def finished_with(command_path: str, result_path: str, log_path: str,
                  command: Sequence[str]) -> bool:
  """Whether an earlier run left its result and log, started by `command`.

  Args:
    command_path: the JSON list the earlier run's command was written to.
    result_path: its result.json (written once evaluation finished).
    log_path: its output.
    command: the command this invocation would run.
  """
  if not all(os.path.exists(p) for p in (command_path, result_path,
                                         log_path)):
    return False
  with open(command_path) as f:
    return json.load(f) == list(command)


def run_one(args, name: str, precision: str, seed: int, data_dir: str,
            num_train: int, num_eval: int, work_dir: str) -> dict:
  """Runs one pretraining process; returns its record (raises on failure)."""
  model_dir = os.path.join(work_dir, name)
  log_path = os.path.join(work_dir, f"{name}.log")
  command_path = os.path.join(work_dir, f"{name}.command.json")
  result_path = os.path.join(model_dir, "result.json")
  command = [args.python, args.run_py,
             *run_py_flags(args, data_dir, num_train, precision, seed,
                           model_dir)]
  if args.resume and finished_with(command_path, result_path, log_path,
                                   command):
    print(f"  {name}: finished earlier with the same command, read from "
          f"{model_dir}", flush=True)
    status, wall, resumed = 0, None, True
  else:
    # A result left by an earlier command must not pass for this run's, even
    # if this one fails before writing its own.
    if os.path.exists(result_path):
      os.remove(result_path)
    with open(command_path, "w") as f:
      json.dump(command, f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    with open(log_path, "w") as log:
      status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                               env=env)
    wall, resumed = time.perf_counter() - start, False
  with open(log_path) as f:
    output = f.read()
  if status or not os.path.exists(result_path):
    raise RuntimeError(f"{name} failed (exit {status}), log {log_path}:\n"
                       + output[-3000:])
  with open(result_path) as f:
    result = json.load(f)
  trained = re.search(r"training finished at step (\d+) in (\d+)s", output)
  warmup = re.search(r"warm-up (\d+)", output)
  train_seconds = float(trained.group(2)) if trained else None
  return {"run": name, "precision": precision, "seed": seed,
          "command": command,
          "wall_seconds": round(wall, 1) if wall is not None else None,
          "resumed": resumed,
          "train_seconds": train_seconds,
          # Tracing and the pipeline's start included; the steady time is
          # read from the summaries after the runs.
          "seconds_per_step": (train_seconds / args.train_steps
                               if train_seconds is not None else None),
          "warmup_steps": int(warmup.group(1)) if warmup else None,
          "train_examples": num_train,
          # What the evaluation counted (a partial last batch included).
          "eval_examples": int(result.get("eval_examples", num_eval)),
          "result": result, "model_dir": model_dir, "log": log_path}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--data_dir", required=True,
                 help="image folder ROOT/train|test/<class>/*.jpg")
  p.add_argument("--out", default=None,
                 help="append JSON lines (runs, table rows, verdict) here")
  p.add_argument("--python", default=sys.executable,
                 help="interpreter with tf_simclr's requirements")
  p.add_argument("--run_py", default=os.path.join(REPO_ROOT, "run.py"))
  p.add_argument("--work_dir", default="",
                 help="model dirs, logs and the data subset; default: a "
                 "temporary folder, removed at the end unless --keep")
  p.add_argument("--keep", action="store_true",
                 help="keep the temporary work folder")
  p.add_argument("--resume", action="store_true",
                 help="with --work_dir: read, not rerun, each run that "
                 "finished there earlier with the same command (its wall "
                 "time is then not known)")
  g = p.add_argument_group("recipe")
  g.add_argument("--train_steps", type=int, default=300)
  g.add_argument("--batch_size", type=int, default=256)
  g.add_argument("--resnet_depth", type=int, default=18)
  g.add_argument("--width_multiplier", type=float, default=1.0)
  g.add_argument("--image_size", type=int, default=32)
  g.add_argument("--learning_rate", type=float, default=1.0,
                 help="LARS base rate, scaled by batch/256")
  g.add_argument("--temperature", type=float, default=0.5)
  g.add_argument("--color_jitter_strength", type=float, default=0.5)
  g.add_argument("--min_crop_area", type=float, default=0.08)
  g.add_argument("--weight_decay", type=float, default=1e-4)
  g.add_argument("--warmup_fraction", type=float, default=0.1,
                 help="linear warm-up as a fraction of train_steps (then "
                 "cosine decay)")
  g.add_argument("--eval_batch_size", type=int, default=256)
  g = p.add_argument_group("shrinking and measurement")
  g.add_argument("--train_per_class", type=int, default=0,
                 help="use the first N training images of each class (0: all)")
  g.add_argument("--test_per_class", type=int, default=0,
                 help="evaluate on the first N test images of each class "
                 "(0: all)")
  g.add_argument("--window", type=int, default=50,
                 help="steps per averaging window of the training metrics")
  g.add_argument("--steps_per_loop", type=int, default=5,
                 help="run.py's --steps_per_loop: one summary point per loop")
  return p


def _check_args(args) -> None:
  for name in ("train_steps", "batch_size", "window", "steps_per_loop",
               "eval_batch_size"):
    if getattr(args, name) <= 0:
      raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
  if args.window % args.steps_per_loop:
    raise ValueError(
        f"--window ({args.window}) must be a multiple of --steps_per_loop "
        f"({args.steps_per_loop}): a summary point covers one loop")
  for split in ("train", "test"):
    if not os.path.isdir(os.path.join(args.data_dir, split)):
      raise ValueError(f"--data_dir {args.data_dir!r} has no {split}/ folder "
                       "(expected ROOT/train|test/<class>/*.jpg)")
  if not 0 <= args.warmup_fraction < 1:
    raise ValueError(
        f"--warmup_fraction must be in [0, 1), got {args.warmup_fraction}")
  if args.resume and not args.work_dir:
    raise ValueError("--resume needs --work_dir (the folder of the earlier "
                     "runs), got none")


def _seconds(value: Optional[float]) -> str:
  return "unknown (resumed)" if value is None else f"{value:.0f} s"


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    _check_args(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  machine = cpu_description()
  bf16_native = [f for f in _BF16_FLAGS if f in machine["vector_extensions"]]
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  print(f"{started} | CPU: {machine['cpu']}, {machine['cores']} cores, "
        f"{' '.join(machine['vector_extensions']) or 'no AVX'} | bfloat16 in "
        f"hardware: {' '.join(bf16_native) if bf16_native else 'no (emulated)'}",
        flush=True)
  temporary = not args.work_dir
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="bf16_equal_steps_")
  os.makedirs(work_dir, exist_ok=True)
  out = open(args.out, "a") if args.out else None  # pylint: disable=consider-using-with

  def emit(record: dict) -> None:
    if out:
      out.write(json.dumps(record) + "\n")
      out.flush()

  status = 0
  try:
    data_dir = args.data_dir
    if args.train_per_class or args.test_per_class:
      data_dir = subset_folder(args.data_dir, os.path.join(work_dir, "data"),
                               {"train": args.train_per_class,
                                "test": args.test_per_class})
    num_train = count_images(os.path.join(data_dir, "train"))
    num_eval = count_images(os.path.join(data_dir, "test"))
    print(f"data: {num_train} train / {num_eval} test images; "
          f"R{args.resnet_depth} {args.width_multiplier:g}x, "
          f"{args.image_size} px, batch {args.batch_size}, "
          f"{args.train_steps} steps; work dir {work_dir}", flush=True)
    runs = {}
    for name, precision, seed in RUNS:
      record = run_one(args, name, precision, seed, data_dir, num_train,
                       num_eval, work_dir)
      runs[name] = record
      per_step = record["seconds_per_step"]
      print(f"  {name:11s} {precision:14s} seed {seed}: wall "
            f"{_seconds(record['wall_seconds'])}, training "
            f"{record['train_seconds'] or float('nan'):.0f} s "
            f"({per_step or float('nan'):.2f} s/step with tracing), warm-up "
            f"{record['warmup_steps']} steps, {TOP_1} "
            f"{record['result'].get(TOP_1, float('nan')):.4f}", flush=True)
      emit({"bench": "bf16_equal_steps", "kind": "run", "machine": machine,
            "started": started, **record})
    for name, record in runs.items():
      record["scalars"] = read_scalars(
          os.path.join(record["model_dir"], "train"))
      record["steady_seconds_per_step"] = steady_step_seconds(
          record["scalars"].get("train/images_per_second", {}),
          args.batch_size)
      steady = record["steady_seconds_per_step"]
      print(f"  {name:11s} steady {steady or float('nan'):.3f} s/step "
            "(median over loops after the first)")
      emit({"bench": "bf16_equal_steps", "kind": "steady", "run": name,
            "started": started, "steady_seconds_per_step": steady})
    rows = comparison_rows(runs, args.window)
    for row in rows:
      emit({"bench": "bf16_equal_steps", "kind": "row", "started": started,
            **row})
    top1 = rows[-1]
    verdict = {
        "all_within_noise": all(r["within"] for r in rows),
        "top1_within_target": top1["within_target"],
        "top1_difference": top1["difference"],
    }
    print(f"\nbfloat16 against float32 at {args.train_steps} equal steps, "
          f"{started}, {machine['cpu']} (bfloat16 in hardware: "
          f"{' '.join(bf16_native) or 'no'}):\n")
    print(format_table(rows))
    print(f"\nwithin noise on every row: "
          f"{'yes' if verdict['all_within_noise'] else 'no'}; linear-eval "
          f"top-1 within {TOP_1_TARGET * 100:g} point of float32 (the "
          f"issue's target): {'yes' if verdict['top1_within_target'] else 'no'}"
          f" (|difference| {top1['difference'] * 100:.2f} points)")
    emit({"bench": "bf16_equal_steps", "kind": "verdict", "started": started,
          "machine": machine, "args": vars(args), **verdict})
  except (RuntimeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    status = 1
  finally:
    if out:
      out.close()
    if temporary and not args.keep:
      shutil.rmtree(work_dir, ignore_errors=True)
    elif temporary:
      print(f"kept {work_dir}")
  return status


if __name__ == "__main__":
  sys.exit(main())
