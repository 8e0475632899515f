"""Time to accuracy: linear-eval top-1 after a fixed wall-clock budget.

  python bench/time_to_accuracy.py --original_dir=PATH/simclr/tf2 \
      --data_dir=PATH/cifar10 [--budget_minutes=20] \
      [--which=original,ours,fast] [--fast_flags="--width_multiplier=..."] \
      [--out=FILE.jsonl]

Three recipes pretrain on the same image folder (`ROOT/<split>/<class>/*.jpg`),
one process at a time on this machine, each for the same wall-clock budget:

* `original`: the original SimCLR TF2 code (`--original_dir`, a checkout of
  google-research/simclr's `tf2/`) with its README's CIFAR-10 recipe (R18 1x,
  batch 512, LARS 1.0, weight decay 1e-4, temperature 0.5, 32 px, no blur,
  colour strength 0.5), run unmodified through `original_runner.py`.
* `ours`: tf_simclr's `run.py` with the same recipe, every value given as a
  flag (the original's crops down to 8 % and flips included), so no preset
  changes it.
* `fast`: the same plus `--fast_flags` (default: what this repo documents as
  fast on a CPU; the choice and its reasons are printed).

Both codes train a linear classifier on stop-gradient encoder features while
they pretrain; its top-1 on `--eval_split` (`label_top_1_accuracy` in the
model directory's result.json, written by `--mode=eval` on the last
checkpoint) is the accuracy reported.

The budget covers training only: from starting the training process to the
moment its last checkpoint is written (interpreter start, graph building,
tracing, input pipeline and every checkpoint save included; the process's
teardown after that is recorded as `exit_seconds`, not counted). The
evaluation of the last checkpoint runs afterwards in a separate process of the
same code, on the same split for every recipe, and is timed and reported but
not counted (the original's evaluation also exports a SavedModel).

The learning-rate schedule depends on the run's length, so each recipe first
runs a calibration (same flags, checkpoints every
`--calibration_steps_per_window` steps, stopped once at least three windows
and `--calibration_seconds` after the first two are timed): seconds per step
and the fixed start-up cost, fitted from the checkpoint files' times, give the number of steps whose
whole schedule fits in the budget (times `--safety`). Saving every few steps
costs more per step than the run's sparser saves (about `--checkpoints` per
run), so when the planned period is at least twice the calibration's, a second
calibration at the planned period gives the final plan. The recipe's 10 warm-up
epochs would outlast any such run, so every recipe warms up for
`--warmup_fraction` of its steps, then decays (cosine) to the end. A run still
going at the budget plus `--overrun_percent` is stopped, and its last
checkpoint evaluated (flagged in the output). Calibration time is not counted.

Printed: the CPU model and its vector extensions, the fast recipe and why,
one line per run (recipe, steps done, training wall, evaluation wall, top-1),
then a markdown table; every run goes to `--out` as a JSON line.
For a smoke test: a tiny image folder (a few images per class in each split),
`--budget_minutes=1 --batch_size=8 --width_multiplier=0.0625 --eval_steps=1
--eval_batch_size=8 --calibration_seconds=5`. The image size stays 32: the
original code evaluates only at the images' own size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from side_by_side import cpu_description  # noqa: E402

RECIPES = ("original", "ours", "fast")

# The original README's CIFAR-10 pretraining command, minus its length,
# dataset and model_dir (set per run here).
ORIGINAL_RECIPE = ("--train_mode=pretrain", "--train_batch_size=512",
                   "--learning_rate=1.0", "--weight_decay=1e-4",
                   "--temperature=0.5", "--image_size=32", "--resnet_depth=18",
                   "--use_blur=False", "--color_jitter_strength=0.5",
                   "--use_tpu=False", "--width_multiplier=1")

# The same recipe in tf_simclr's flags, with every value the original's code
# defaults to spelled out too (the default digits_cpu preset differs in
# crops, flips, monitors and warm-up). The batch norm is tf_simclr's default
# fused kernel: the same maths as the original's unfused graph, faster here.
OURS_RECIPE = ("--train_mode=pretrain", "--train_batch_size=512",
               "--learning_rate=1.0", "--learning_rate_scaling=linear",
               "--optimizer=lars", "--momentum=0.9", "--weight_decay=1e-4",
               "--temperature=0.5", "--image_size=32",
               "--pretrain_image_size=0", "--resnet_depth=18",
               "--width_multiplier=1", "--sk_ratio=0", "--se_ratio=0",
               "--nouse_blur", "--color_jitter_strength=0.5",
               "--min_crop_area=0.08", "--horizontal_flip",
               "--proj_head_mode=nonlinear", "--num_proj_layers=3",
               "--proj_out_dim=128", "--ft_proj_selector=0", "--hidden_norm",
               "--global_bn", "--batch_norm_decay=0.9",
               "--lineareval_while_pretraining", "--memory_size=0",
               "--precision=float32", "--nojit_compile",
               "--fused_batch_norm", "--nocache_dataset", "--noknn_eval",
               "--probe_label_fractions=", "--noexport_at_end")

# What the repo documents as fast on a 2-core CPU (docs/EXPERIMENTS.md,
# CIFAR-10: R18 x0.25 at batch 256 with 24-px views and crops >= 20 %, the
# fused batch norm, decoded images cached; README: 24-px views 1.48x).
FAST_BASE = ("--width_multiplier=0.25", "--train_batch_size=256",
             "--pretrain_image_size=24", "--min_crop_area=0.2",
             "--fused_batch_norm", "--cache_dataset")


def default_fast_flags(native_bf16: Optional[str]) -> tuple[list[str], str]:
  """The default `--fast_flags` and why, given what computes bfloat16.

  Args:
    native_bf16: `tf_simclr.training.precision.native_bfloat16()`'s answer
      on this machine (None: bfloat16 would be emulated).
  """
  flags = list(FAST_BASE)
  why = ("R18 x0.25, batch 256, 24-px views, crops >= 20 %, fused batch "
         "norm, cached images: docs/EXPERIMENTS.md's CPU CIFAR-10 recipe")
  if native_bf16:
    flags.append("--precision=mixed_bfloat16")
    why += f"; mixed_bfloat16 because {native_bf16} computes it natively"
  else:
    why += "; float32 because this CPU has neither AMX nor AVX512_BF16"
  return flags, why


# Calibration windows (checkpoint periods) left out of the fit, and the
# fewest timed after them. The original code's second window still ran 1.4x
# slower than its steady state here (2026-12-03), and a fit on one or two
# windows planned its 20 minutes as 14.
CALIBRATION_WARMUP_WINDOWS = 2
CALIBRATION_TIMED_WINDOWS = 3


def fit_step_time(checkpoints: dict[int, float],
                  warmup_windows: int = CALIBRATION_WARMUP_WINDOWS
                  ) -> tuple[float, float]:
  """Seconds per step and fixed start-up seconds from checkpoint times.

  Args:
    checkpoints: step -> seconds since the process started, at which
      `ckpt-<step>` was written.
    warmup_windows: windows (checkpoint periods) from the start left out of
      the per-step fit: they hold tracing, buffer fill and slower first
      steps.

  Returns:
    (seconds per step over the later windows, seconds the run costs beyond
    steps x seconds per step, i.e. start-up extrapolated from the last save).
  """
  if warmup_windows < 1:
    raise ValueError(f"warmup_windows must be >= 1, got {warmup_windows!r}")
  points = sorted(checkpoints.items())
  if len(points) < warmup_windows + 1:
    raise ValueError(
        f"checkpoints: {len(points)} saved, need {warmup_windows + 1} to time "
        "one window after the warm-up (raise --calibration_seconds)")
  (first_step, first_t), (last_step, last_t) = points[warmup_windows - 1], \
      points[-1]
  step_seconds = (last_t - first_t) / (last_step - first_step)
  if step_seconds <= 0:
    raise ValueError(f"checkpoints: non-increasing times {points!r}")
  return step_seconds, max(0.0, last_t - last_step * step_seconds)


def plan_steps(budget_seconds: float, step_seconds: float,
               overhead_seconds: float, safety: float = 0.95,
               checkpoints: int = 20,
               min_period: int = 1) -> tuple[int, int]:
  """Training steps that fit the budget, and the checkpoint period.

  Args:
    budget_seconds: wall-clock budget of the training process.
    step_seconds: calibrated seconds per step.
    overhead_seconds: calibrated fixed cost (start-up, tracing).
    safety: fraction of the remaining time planned for, against noise.
    checkpoints: about this many checkpoints per run; the steps are rounded
      down to a multiple of the period (the original code's loop runs whole
      periods, so it would overshoot otherwise).
    min_period: the calibration's checkpoint period: saving more often than
      it did would cost more per step than was measured.

  Returns:
    (train_steps, checkpoint_steps), train_steps a multiple of the period.
  """
  if budget_seconds <= 0:
    raise ValueError(f"budget_seconds must be > 0, got {budget_seconds!r}")
  if step_seconds <= 0:
    raise ValueError(f"step_seconds must be > 0, got {step_seconds!r}")
  if not 0 < safety <= 1:
    raise ValueError(f"safety must be in (0, 1], got {safety!r}")
  if checkpoints < 1:
    raise ValueError(f"checkpoints must be >= 1, got {checkpoints!r}")
  if min_period < 1:
    raise ValueError(f"min_period must be >= 1, got {min_period!r}")
  steps = int((budget_seconds - overhead_seconds) * safety // step_seconds)
  if steps < 1:
    raise ValueError(
        f"budget_seconds={budget_seconds:g}: no step fits after "
        f"{overhead_seconds:.0f} s of start-up at {step_seconds:.2f} s/step")
  period = max(min_period, steps // checkpoints)
  if steps < period:
    raise ValueError(
        f"budget_seconds={budget_seconds:g}: {steps} step(s) fit, fewer than "
        f"one checkpoint period of {period}")
  return steps // period * period, period


def warmup_epochs_for(warmup_steps: int, num_examples: int,
                      batch_size: int) -> float:
  """Warm-up in epochs that both codes turn into exactly `warmup_steps`.

  Both floor warmup_epochs * num_examples / batch_size; half a step more
  keeps that floor clear of rounding error.
  """
  if num_examples < 1 or batch_size < 1 or warmup_steps < 0:
    raise ValueError(f"warmup_epochs_for: need warmup_steps >= 0 and "
                     f"positive sizes, got {warmup_steps!r}, "
                     f"{num_examples!r}, {batch_size!r}")
  return (warmup_steps + 0.5) * batch_size / num_examples


def linear_eval_top1(result: dict) -> float:
  """`label_top_1_accuracy` from either code's result.json.

  The original names its metrics `eval/label_top_1_accuracy`; tf_simclr
  writes `label_top_1_accuracy` (and `teacher_...` when distilling).
  """
  for key in ("label_top_1_accuracy", "eval/label_top_1_accuracy"):
    if key in result:
      return float(result[key])
  raise ValueError(f"result: no label_top_1_accuracy among {sorted(result)}")


def flag_value(flags: Sequence[str], name: str) -> Optional[str]:
  """The value the last `--name=value` in `flags` gives (absl's rule)."""
  value = None
  for flag in flags:
    if flag.startswith(f"--{name}="):
      value = flag.split("=", 1)[1]
  return value


def count_images(data_dir: str, split: str) -> int:
  """Files under ROOT/<split>/<class>/, as both codes count examples."""
  root = os.path.join(data_dir, split)
  if not os.path.isdir(root):
    raise ValueError(f"data_dir: no split folder {root!r}")
  return sum(len(files) for _, _, files in os.walk(root))


def _scan_checkpoints(model_dir: str, start: float,
                      seen: dict[int, float]) -> None:
  # Newest files only are kept (keep_checkpoint_max), so remember each one's
  # time when first seen.
  try:
    names = os.listdir(model_dir)
  except FileNotFoundError:
    return
  for name in names:
    match = re.fullmatch(r"ckpt-(\d+)\.index", name)
    if match and int(match.group(1)) not in seen:
      try:
        seen[int(match.group(1))] = (
            os.path.getmtime(os.path.join(model_dir, name)) - start)
      except FileNotFoundError:
        pass


def supervise(command: Sequence[str], model_dir: str, log_path: str,
              limit_seconds: float, stop=None,
              final_step: Optional[int] = None,
              exit_grace_seconds: float = 300.0) -> dict:
  """Runs `command`, recording when each checkpoint appears.

  Args:
    command: the child process.
    model_dir: where it writes `ckpt-<step>` files.
    log_path: its stdout and stderr.
    limit_seconds: killed (SIGKILL, so nothing more is written) at this wall.
    stop: optional f(checkpoints) -> bool; kills the child when true.
    final_step: once `ckpt-<final_step>` exists the run is trained: the
      child then gets `exit_grace_seconds` more to exit (teardown is not
      training) before it is killed.
    exit_grace_seconds: see final_step.

  Returns:
    {"status", "seconds" (start to exit or kill), "checkpoints"
    (step -> seconds since start), "killed"}.
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  seen: dict[int, float] = {}
  killed = False
  with open(log_path, "w") as log:
    start = time.time()
    proc = subprocess.Popen(list(command), stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=REPO)
    while proc.poll() is None:
      _scan_checkpoints(model_dir, start, seen)
      limit = limit_seconds
      if final_step is not None and final_step in seen:
        limit = max(limit, seen[final_step] + exit_grace_seconds)
      if time.time() - start > limit or (stop and stop(seen)):
        end = time.time()
        proc.kill()
        proc.wait()
        killed = True
        break
      time.sleep(0.25)
    else:
      end = time.time()
  _scan_checkpoints(model_dir, start, seen)
  return {"status": proc.returncode, "seconds": end - start,
          "checkpoints": seen, "killed": killed}


def _tail(path: str, chars: int = 3000) -> str:
  with open(path) as f:
    return f.read()[-chars:]


class Recipe:
  """Builds one recipe's training and evaluation commands.

  Args:
    name: one of RECIPES.
    args: the parsed command line.
    extra: flags after the recipe's own (the fast flags).
    why: why those flags (printed and recorded).
  """

  def __init__(self, name: str, args, extra: Sequence[str] = (),
               why: str = ""):
    self.name, self.args, self.extra, self.why = name, args, list(extra), why

  @property
  def original(self) -> bool:
    return self.name == "original"

  def flags(self) -> list[str]:
    """Recipe flags with the smoke-test overrides last (absl: last wins)."""
    a = self.args
    base = list(ORIGINAL_RECIPE if self.original else OURS_RECIPE)
    flags = base + self.extra
    if a.batch_size:
      flags.append(f"--train_batch_size={a.batch_size}")
    if a.width_multiplier and not self.original:
      flags.append(f"--width_multiplier={a.width_multiplier:g}")
    return flags

  @property
  def batch_size(self) -> int:
    return int(flag_value(self.flags(), "train_batch_size"))

  def command(self, model_dir: str, mode: str, train_steps: int,
              checkpoint_steps: int, warmup_epochs: float) -> list[str]:
    a = self.args
    run = [f"--mode={mode}", f"--model_dir={model_dir}",
           f"--train_split={a.train_split}", f"--eval_split={a.eval_split}",
           f"--train_steps={train_steps}",
           f"--checkpoint_steps={checkpoint_steps}",
           f"--warmup_epochs={warmup_epochs!r}",
           f"--eval_steps={a.eval_steps}",
           f"--eval_batch_size={a.eval_batch_size}", "--keep_checkpoint_max=5"]
    if self.original:
      # original_runner.py swaps tfds.builder for tfds.ImageFolder(data_dir);
      # its report (images/s of the windows) is not used here.
      return [a.python, os.path.join(HERE, "original_runner.py"),
              f"--original_dir={a.original_dir}", f"--data_dir={a.data_dir}",
              f"--report={model_dir}.runner.json",
              f"--batch_size={self.batch_size}",
              f"--steps_per_window={checkpoint_steps}", "--",
              "--dataset=image_folder", *self.flags(), *run]
    return [a.python, os.path.join(REPO, "run.py"), "--dataset=image_folder",
            f"--data_dir={a.data_dir}", *self.flags(), *run]


def _native_bfloat16(python: str) -> Optional[str]:
  # In a child, so this driver never loads TensorFlow next to the runs.
  out = subprocess.run(
      [python, "-c", "from tf_simclr.training.precision import "
       "native_bfloat16; print(native_bfloat16() or '')"],
      cwd=REPO, capture_output=True, text=True, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else None


def run_recipe(recipe: Recipe, work: str, num_examples: int) -> dict:
  """Calibrates, trains for the budget, evaluates the last checkpoint."""
  a = recipe.args
  budget = a.budget_minutes * 60.0
  batch = recipe.batch_size
  k_cal = a.calibration_steps_per_window
  warmup_cal = warmup_epochs_for(0, num_examples, batch)

  # 1. Calibration: many steps planned, stopped once enough windows after
  # the first are timed. A save every k_cal steps costs more per step than
  # the run's sparser saves: when the planned period is at least twice
  # k_cal (cheap steps), calibrate once more at that period.
  def calibrated(seen: dict[int, float]) -> bool:
    steps = sorted(seen)
    warm = CALIBRATION_WARMUP_WINDOWS
    return (len(steps) >= warm + CALIBRATION_TIMED_WINDOWS and
            seen[steps[-1]] - seen[steps[warm - 1]] >= a.calibration_seconds)

  calibrations = []
  period = k_cal
  while True:
    cal_dir = os.path.join(work, f"{recipe.name}_calibration_{period}")
    cal = supervise(recipe.command(cal_dir, "train", period * 100000, period,
                                   warmup_cal),
                    cal_dir, cal_dir + ".log", budget, calibrated)
    try:
      step_seconds, overhead = fit_step_time(cal["checkpoints"])
      steps, planned_period = plan_steps(budget, step_seconds, overhead,
                                         a.safety, a.checkpoints,
                                         min_period=period)
    except ValueError as e:
      if not calibrations:
        raise RuntimeError(f"{recipe.name}: calibration: {e}\n"
                           + _tail(cal_dir + ".log")) from e
      # The first calibration's plan stands (it saves more often, so its
      # estimate errs on the short side).
      print(f"  {recipe.name}: second calibration at {period} steps per "
            f"window gave no estimate ({e}); planned from the first",
            flush=True)
      steps, period = first_plan
      break
    first_plan = (steps, planned_period)
    calibrations.append({
        "steps_per_window": period,
        "checkpoints": {str(k): round(v, 2) for k, v in
                        sorted(cal["checkpoints"].items())},
        "seconds_per_step": step_seconds, "overhead_seconds": overhead,
        "wall_seconds": round(cal["seconds"], 1)})
    if len(calibrations) > 1 or planned_period < 2 * period:
      period = planned_period
      break
    period = planned_period
  warmup_steps = int(steps * a.warmup_fraction)
  warmup = warmup_epochs_for(warmup_steps, num_examples, batch)

  # 2. The budgeted run: the whole schedule of `steps` steps.
  run_dir = os.path.join(work, recipe.name)
  train = supervise(recipe.command(run_dir, "train", steps, period, warmup),
                    run_dir, run_dir + ".train.log",
                    budget * (1 + a.overrun_percent / 100.0),
                    final_step=steps)
  if not train["checkpoints"]:
    raise RuntimeError(f"{recipe.name}: no checkpoint within the budget "
                       f"(exit {train['status']}):\n"
                       + _tail(run_dir + ".train.log"))
  if not train["killed"] and train["status"]:
    raise RuntimeError(f"{recipe.name}: training failed (exit "
                       f"{train['status']}):\n" + _tail(run_dir + ".train.log"))
  done = max(train["checkpoints"])

  # 3. Evaluation of the last checkpoint. The original's eval loop waits
  # for a checkpoint at --train_steps, so it gets the step reached.
  eval_steps = done if recipe.original else steps
  evaluation = supervise(
      recipe.command(run_dir, "eval", eval_steps, period, warmup), run_dir,
      run_dir + ".eval.log", a.eval_timeout_minutes * 60.0)
  result_path = os.path.join(run_dir, "result.json")
  if evaluation["status"] or not os.path.exists(result_path):
    raise RuntimeError(f"{recipe.name}: evaluation failed (exit "
                       f"{evaluation['status']}):\n"
                       + _tail(run_dir + ".eval.log"))
  with open(result_path) as f:
    result = json.load(f)
  return {
      "recipe": recipe.name, "flags": recipe.flags(),
      "extra_flags": recipe.extra, "why": recipe.why,
      "budget_seconds": budget,
      # The last calibration planned the run; all are kept.
      "calibration": calibrations[-1], "calibrations": calibrations,
      "train_steps": steps, "checkpoint_steps": period,
      "warmup_steps": warmup_steps, "warmup_epochs": warmup,
      "batch_size": batch, "steps_done": done,
      "images_seen": done * batch,
      # Start to the last checkpoint: the trained state; what follows is
      # teardown (exit_seconds, not counted).
      "train_seconds": round(train["checkpoints"][done], 1),
      "exit_seconds": round(train["seconds"] - train["checkpoints"][done], 1),
      # Killed at budget + overrun: before its last planned step, or after
      # it (then only the exit was cut short).
      "stopped_at_budget": train["killed"] and done < steps,
      "killed_after_last_step": train["killed"] and done >= steps,
      "eval_seconds": round(evaluation["seconds"], 1),
      "eval_global_step": int(result.get("global_step", -1)),
      "top1": linear_eval_top1(result),
  }


def format_line(r: dict) -> str:
  """One run in one line: recipe, steps, walls, top-1."""
  note = (" STOPPED AT BUDGET" if r["stopped_at_budget"] else
          " (killed at the budget after its last step)"
          if r["killed_after_last_step"] else "")
  return (f"  {r['recipe']:8s} {r['steps_done']}/{r['train_steps']} steps of "
          f"batch {r['batch_size']} (calibrated "
          f"{r['calibration']['seconds_per_step']:.2f} s/step), training "
          f"{r['train_seconds']:.0f} s{note}, eval {r['eval_seconds']:.0f} s, "
          f"linear-eval top-1 {r['top1']:.4f}")


def format_table(records: Sequence[dict]) -> str:
  """Markdown table of the runs, one row each."""
  described = {"original": "original code, its README's CIFAR-10 recipe",
               "ours": "tf_simclr, the same recipe"}
  lines = ["| recipe | steps done/planned (batch) | s/step (calibrated) | "
           "training wall | eval wall | linear-eval top-1 |",
           "|---|---|---|---|---|---|"]
  for r in records:
    stopped = (" (stopped at budget)" if r["stopped_at_budget"] else
               " (killed after its last step)"
               if r["killed_after_last_step"] else "")
    what = described.get(r["recipe"]) or (
        "tf_simclr, the same recipe + `" + " ".join(r["extra_flags"]) + "`")
    lines.append(
        f"| {r['recipe']}: {what} | {r['steps_done']}/{r['train_steps']} "
        f"({r['batch_size']}) | {r['calibration']['seconds_per_step']:.2f} | "
        f"{r['train_seconds']:.0f} s of {r['budget_seconds']:.0f} s{stopped} | "
        f"{r['eval_seconds']:.0f} s | **{r['top1']:.4f}** |")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--original_dir", default=None,
                 help="the original code's tf2/ folder (holds run.py); "
                 "needed for --which=original")
  p.add_argument("--data_dir", required=True,
                 help="image folder ROOT/<split>/<class>/*.jpg")
  p.add_argument("--train_split", default="train")
  p.add_argument("--eval_split", default="test")
  p.add_argument("--which", default=",".join(RECIPES),
                 help=f"comma-separated recipes, run in this order, from "
                 f"{list(RECIPES)}")
  p.add_argument("--budget_minutes", type=float, default=20.0,
                 help="training wall-clock budget of each run")
  p.add_argument("--fast_flags", default=None,
                 help="run.py flags of the fast recipe, after the ours "
                 "recipe's (default: chosen for this CPU, printed)")
  p.add_argument("--safety", type=float, default=0.95,
                 help="fraction of the budget after start-up planned for")
  p.add_argument("--warmup_fraction", type=float, default=0.1,
                 help="linear warm-up as a fraction of each run's steps")
  p.add_argument("--checkpoints", type=int, default=20,
                 help="about this many checkpoints per budgeted run")
  p.add_argument("--overrun_percent", type=float, default=5.0,
                 help="a run this far past the budget is stopped and its "
                 "last checkpoint evaluated")
  p.add_argument("--calibration_steps_per_window", type=int, default=2)
  p.add_argument("--calibration_seconds", type=float, default=60.0,
                 help="timed calibration windows (after the first two) per "
                 "recipe, at least three")
  p.add_argument("--eval_steps", type=int, default=0,
                 help="evaluation batches (0: the whole split)")
  p.add_argument("--eval_batch_size", type=int, default=256)
  p.add_argument("--eval_timeout_minutes", type=float, default=30.0)
  p.add_argument("--batch_size", type=int, default=0,
                 help="smoke tests: training batch of every recipe")
  p.add_argument("--width_multiplier", type=float, default=0.0,
                 help="smoke tests: tf_simclr's width (ours and fast; the "
                 "original supports whole widths only)")
  p.add_argument("--work_dir", default=None,
                 help="model directories and logs (default: a temporary "
                 "folder, deleted at the end)")
  p.add_argument("--python", default=sys.executable,
                 help="interpreter of a venv with TensorFlow, tf_keras, "
                 "tensorflow-datasets and tf_simclr")
  p.add_argument("--out", default=None, help="JSON lines of every run")
  return p


def parse_which(which: str) -> list[str]:
  """`--which` as a list of recipe names, in the order given."""
  names = [n.strip() for n in which.split(",") if n.strip()]
  unknown = [n for n in names if n not in RECIPES]
  if unknown or not names:
    raise ValueError(f"--which={which!r}: unknown or no recipes {unknown}; "
                     f"known: {list(RECIPES)}")
  return names


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    names = parse_which(args.which)
    if "original" in names and not (args.original_dir and os.path.isfile(
        os.path.join(args.original_dir, "run.py"))):
      raise ValueError(f"--original_dir={args.original_dir!r} holds no run.py")
    num_examples = count_images(args.data_dir, args.train_split)
    count_images(args.data_dir, args.eval_split)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  machine = cpu_description()
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  print(f"{started} | CPU: {machine['cpu']}, {machine['cores']} cores, "
        f"{' '.join(machine['vector_extensions']) or 'no AVX'}", flush=True)
  print(f"budget: {args.budget_minutes:g} min of training per run "
        f"(evaluation not counted); {num_examples} training images",
        flush=True)
  recipes = []
  for name in names:
    extra: list[str] = []
    why = ""
    if name == "fast":
      if args.fast_flags is None:
        extra, why = default_fast_flags(_native_bfloat16(args.python))
        print(f"fast recipe (default): {' '.join(extra)}\n  why: {why}",
              flush=True)
      else:
        extra, why = shlex.split(args.fast_flags), "given by --fast_flags"
        print(f"fast recipe (--fast_flags): {' '.join(extra)}", flush=True)
    recipes.append(Recipe(name, args, extra, why))

  # pylint: disable-next=consider-using-with
  out = open(args.out, "a") if args.out else None
  work = args.work_dir or tempfile.mkdtemp(prefix="time_to_accuracy_")
  os.makedirs(work, exist_ok=True)
  records, status = [], 0
  try:
    for recipe in recipes:
      print(f"{recipe.name}: calibrating, then {args.budget_minutes:g} min",
            flush=True)
      try:
        record = run_recipe(recipe, work, num_examples)
      except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        status = 1
        continue
      record.update(machine=machine, started=started)
      records.append(record)
      print(format_line(record), flush=True)
      if out:
        out.write(json.dumps(record) + "\n")
        out.flush()
  finally:
    if records:
      print(f"\nTime to accuracy, {started}, {machine['cpu']} "
            f"({' '.join(machine['vector_extensions'])}), "
            f"{args.budget_minutes:g} min of training each:\n")
      print(format_table(records))
    if out:
      out.close()
    if not args.work_dir:
      shutil.rmtree(work, ignore_errors=True)
  return status


if __name__ == "__main__":
  sys.exit(main())
