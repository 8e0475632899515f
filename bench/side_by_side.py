"""tf_simclr against the original SimCLR TF2 code, side by side in one run.

  python bench/side_by_side.py --original_dir=PATH/simclr/tf2 \
      --data_dir=PATH/cifar10 [--configs=r18_pretrain,r18_finetune] \
      [--precisions=float32,mixed_bfloat16] [--repeats=2] [--out=FILE.jsonl]

`--original_dir` is the original code's `tf2/` folder (a checkout of
google-research/simclr); `--data_dir` an image folder
`ROOT/<split>/<class>/*.jpg` that both sides train on (the original through
`tfds.ImageFolder`, see original_runner.py). Each configuration runs
original, tf_simclr, original, tf_simclr, ... (`--repeats` pairs), one process
at a time, so both sides see the same machine state. tf_simclr also runs in
every extra `--precisions` entry; the original has float32 only.

Printed: the CPU model and its vector extensions, one line per run, then a
table with images/s (each source image counted once; a pretraining step on
batch B counts B), peak RSS (the process's `ru_maxrss`, measured the same way
for both sides by this driver) and the ratios tf_simclr / original. Every run
record and the summary go to `--out` as JSON lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
_VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni",
                 "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                 "amx_int8")


@dataclasses.dataclass(frozen=True)
class Configuration:
  """One benchmark configuration, run identically by both sides.

  Args:
    stage: "pretrain" or "finetune".
    resnet_depth, sk_ratio, image_size, batch_size, use_blur: the model and
      input; width is always 1x (the original supports whole widths only).
    ours: extra `bench_train.py` flags in float32, the ones README
      recommends for it.
    ours_mixed: the same under a mixed precision; None for `ours`.
  """
  stage: str
  resnet_depth: int
  sk_ratio: float
  image_size: int
  batch_size: int
  use_blur: bool
  ours: tuple[str, ...] = ()
  ours_mixed: Optional[tuple[str, ...]] = None

  def flags_for(self, precision: str) -> tuple[str, ...]:
    if precision != "float32" and self.ours_mixed is not None:
      return self.ours_mixed
    return self.ours

  @property
  def color_jitter_strength(self) -> float:
    # The original README's recipes: 0.5 for CIFAR-sized images, 1.0 above.
    return 0.5 if self.image_size <= 32 else 1.0

  def describe(self) -> str:
    parts = [self.stage, f"R{self.resnet_depth} 1x" +
             (" SK" if self.sk_ratio else ""), f"{self.image_size} px",
             f"batch {self.batch_size}"]
    if self.use_blur:
      parts.append("blur")
    return ", ".join(parts)


# README recommends recomputing block groups 1-2 for ResNet-50 on CPU in
# float32: its activations dominate peak memory there. Mixed precision halves
# them, which keeps peak memory under the original's without recomputation.
# Fused batch norm is the default.
_R50_MEMORY = ("--recompute_block_groups=2",)

CONFIGURATIONS = {
    "r18_pretrain": Configuration("pretrain", 18, 0.0, 32, 256, False),
    "r18_finetune": Configuration("finetune", 18, 0.0, 32, 256, False),
    "r50_pretrain": Configuration("pretrain", 50, 0.0, 32, 256, False,
                                  _R50_MEMORY, ()),
    "r50sk_pretrain": Configuration("pretrain", 50, 0.0625, 32, 128, False,
                                    _R50_MEMORY, ()),
    "r50_pretrain_224": Configuration("pretrain", 50, 0.0, 224, 16, True,
                                      _R50_MEMORY, ()),
}

# The same hyperparameters on both sides (bench_train.py's fixed recipe), so
# that both run the same maths; none of them changes the cost of a step.
_SHARED_RECIPE = ("--optimizer=lars", "--learning_rate=1.0",
                  "--weight_decay=1e-4", "--temperature=0.2",
                  "--warmup_epochs=2")


def cpu_description() -> dict:
  """The CPU model and the vector extensions that matter for TF's kernels."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:
    pass
  return {"cpu": model, "cores": os.cpu_count(),
          "vector_extensions": [f for f in _VECTOR_FLAGS if f in flags]}


def _run_measured(command: Sequence[str], env: dict) -> tuple[int, float,
                                                              str, float]:
  """Runs `command`; returns exit status, peak RSS (GB), output, seconds."""
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as log:
    proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                            env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    output = log.read()
  # ru_maxrss is in kilobytes on Linux.
  return (proc.returncode, usage.ru_maxrss / 1024.0**2, output,
          time.perf_counter() - start)


def _original_command(args, cfg: Configuration, model_dir: str,
                      report: str) -> list[str]:
  steps = args.steps_per_window * (1 + args.windows)
  return [
      args.python, os.path.join(HERE, "original_runner.py"),
      f"--original_dir={args.original_dir}", f"--data_dir={args.data_dir}",
      f"--report={report}", "--warmup_windows=1",
      f"--batch_size={cfg.batch_size}",
      f"--steps_per_window={args.steps_per_window}", "--",
      "--use_tpu=False", "--dataset=image_folder", "--train_split=train",
      "--eval_split=test", f"--train_mode={cfg.stage}", "--mode=train",
      f"--resnet_depth={cfg.resnet_depth}", "--width_multiplier=1",
      f"--sk_ratio={cfg.sk_ratio:g}", f"--image_size={cfg.image_size}",
      f"--train_batch_size={cfg.batch_size}", f"--train_steps={steps}",
      f"--checkpoint_steps={args.steps_per_window}",
      f"--use_blur={cfg.use_blur}",
      f"--color_jitter_strength={cfg.color_jitter_strength:g}",
      f"--model_dir={model_dir}", *_SHARED_RECIPE,
  ]


def _ours_command(args, cfg: Configuration, precision: str) -> list[str]:
  return [
      args.python, os.path.join(HERE, "bench_train.py"),
      f"--stage={cfg.stage}", "--dataset=image_folder",
      f"--data_dir={args.data_dir}", f"--resnet_depth={cfg.resnet_depth}",
      "--width_multiplier=1", f"--sk_ratio={cfg.sk_ratio:g}",
      f"--image_size={cfg.image_size}", f"--batch_size={cfg.batch_size}",
      f"--use_blur={'on' if cfg.use_blur else 'off'}",
      f"--color_jitter_strength={cfg.color_jitter_strength:g}",
      f"--precision={precision}",
      f"--warmup_steps={args.steps_per_window}",
      f"--steps={args.steps_per_window * args.windows}",
      f"--steps_per_loop={args.steps_per_window}",
      *cfg.flags_for(precision),
  ]


def run_original(args, name: str, cfg: Configuration) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  with tempfile.TemporaryDirectory(prefix="side_by_side_") as work:
    report_path = os.path.join(work, "report.json")
    command = _original_command(args, cfg, os.path.join(work, "model"),
                                report_path)
    status, rss, output, seconds = _run_measured(command, env)
    report = {}
    if os.path.exists(report_path):
      with open(report_path) as f:
        report = json.load(f)
  if status or "images_per_sec" not in report:
    raise RuntimeError(f"original code failed on {name} (exit {status}):\n"
                       + output[-3000:])
  return {"side": "original", "config": name, "precision": "float32",
          "images_per_sec": report["images_per_sec"], "peak_rss_gb": rss,
          "windows_seconds": report["windows_seconds"],
          "wall_seconds": round(seconds, 1)}


def run_ours(args, name: str, cfg: Configuration, precision: str) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  status, rss, output, seconds = _run_measured(
      _ours_command(args, cfg, precision), env)
  record = None
  for line in output.splitlines():
    if line.startswith("{") and '"bench"' in line:
      record = json.loads(line)
  if status or record is None:
    raise RuntimeError(f"tf_simclr failed on {name} (exit {status}):\n"
                       + output[-3000:])
  return {"side": "tf_simclr", "config": name, "precision": precision,
          "flags": list(cfg.flags_for(precision)),
          "images_per_sec": record["images_per_sec"], "peak_rss_gb": rss,
          "step_seconds": record["step_seconds"],
          "wall_seconds": round(seconds, 1)}


def summarize(records: list[dict], names: Sequence[str],
              precisions: Sequence[str]) -> list[dict]:
  """Mean images/s and highest peak RSS per side; tf_simclr / original."""
  rows = []
  for name in names:
    original = [r for r in records
                if r["config"] == name and r["side"] == "original"]
    if not original:
      continue
    base_speed = statistics.mean(r["images_per_sec"] for r in original)
    base_rss = max(r["peak_rss_gb"] for r in original)
    for precision in precisions:
      ours = [r for r in records if r["config"] == name and
              r["side"] == "tf_simclr" and r["precision"] == precision]
      if not ours:
        continue
      speed = statistics.mean(r["images_per_sec"] for r in ours)
      rss = max(r["peak_rss_gb"] for r in ours)
      rows.append({"config": name,
                   "describe": CONFIGURATIONS[name].describe(),
                   "precision": precision, "flags": ours[0]["flags"],
                   "runs_per_side": [len(original), len(ours)],
                   "original_images_per_sec": base_speed,
                   "original_peak_rss_gb": base_rss,
                   "ours_images_per_sec": speed, "ours_peak_rss_gb": rss,
                   "speed_ratio": speed / base_speed,
                   "rss_ratio": rss / base_rss})
  return rows


def format_table(rows: list[dict]) -> str:
  lines = ["| configuration | tf_simclr flags | original code (float32) | "
           "tf_simclr | speed | peak RSS |", "|---|---|---|---|---|---|"]
  for r in rows:
    flags = " ".join(r["flags"]) or "defaults"
    if r["precision"] != "float32":
      flags = " ".join([f"`--precision={r['precision']}`"] +
                       ([] if flags == "defaults" else [flags]))
    lines.append(
        f"| {r['describe']} | {flags} | "
        f"{r['original_images_per_sec']:.2f} img/s, "
        f"{r['original_peak_rss_gb']:.2f} GB | "
        f"{r['ours_images_per_sec']:.2f} img/s, "
        f"{r['ours_peak_rss_gb']:.2f} GB | "
        f"**{r['speed_ratio']:.2f}×** | {r['rss_ratio']:.2f}× |")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--original_dir", required=True,
                 help="the original code's tf2/ folder (holds run.py)")
  p.add_argument("--data_dir", required=True,
                 help="image folder ROOT/<split>/<class>/*.jpg")
  p.add_argument("--configs", default=",".join(CONFIGURATIONS),
                 help=f"comma-separated, from {sorted(CONFIGURATIONS)}")
  p.add_argument("--precisions", default="float32,mixed_bfloat16",
                 help="tf_simclr precisions; the original runs float32")
  p.add_argument("--repeats", type=int, default=2,
                 help="interleaved runs per side and precision")
  p.add_argument("--steps_per_window", type=int, default=2,
                 help="steps per timed call (the original's "
                 "--checkpoint_steps; tf_simclr's --steps_per_loop)")
  p.add_argument("--windows", type=int, default=2,
                 help="timed windows per run, after one untimed window")
  p.add_argument("--python", default=sys.executable,
                 help="interpreter of a venv with TensorFlow, tf_keras and "
                 "tensorflow-datasets")
  p.add_argument("--out", default=None, help="JSON lines of every run")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  names = [n for n in args.configs.split(",") if n]
  unknown = sorted(set(names) - set(CONFIGURATIONS))
  if unknown:
    print(f"error: unknown --configs {unknown}; known: "
          f"{sorted(CONFIGURATIONS)}", file=sys.stderr)
    return 2
  if not os.path.isfile(os.path.join(args.original_dir, "run.py")):
    print(f"error: --original_dir {args.original_dir!r} holds no run.py",
          file=sys.stderr)
    return 2
  precisions = [p for p in args.precisions.split(",") if p]
  machine = cpu_description()
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  print(f"{started} | CPU: {machine['cpu']}, {machine['cores']} cores, "
        f"{' '.join(machine['vector_extensions']) or 'no AVX'}", flush=True)
  out = open(args.out, "a") if args.out else None  # pylint: disable=consider-using-with
  records = []

  def keep(record: dict) -> None:
    record.update(machine=machine, started=started)
    records.append(record)
    print(f"  {record['side']:9s} {record['config']:17s} "
          f"{record['precision']:14s} {record['images_per_sec']:7.2f} img/s "
          f"peak RSS {record['peak_rss_gb']:.2f} GB "
          f"({record['wall_seconds']:.0f} s)", flush=True)
    if out:
      out.write(json.dumps(record) + "\n")
      out.flush()

  try:
    for name in names:
      cfg = CONFIGURATIONS[name]
      print(f"{name}: {cfg.describe()}", flush=True)
      for _ in range(args.repeats):
        keep(run_original(args, name, cfg))
        for precision in precisions:
          keep(run_ours(args, name, cfg, precision))
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  finally:
    rows = summarize(records, names, precisions)
    if rows:
      print(f"\nSide by side, {started}, {machine['cpu']} "
            f"({' '.join(machine['vector_extensions'])}):\n")
      print(format_table(rows))
      if out:
        out.write(json.dumps({"summary": rows, "machine": machine,
                              "started": started}) + "\n")
    if out:
      out.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
