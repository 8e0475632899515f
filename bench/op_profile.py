"""Where the original code and tf_simclr spend a training step, op by op.

  python bench/op_profile.py --original_dir=PATH/simclr/tf2 \
      --data_dir=PATH/cifar10 --config=r50sk_pretrain [--precision=float32] \
      [--out=FILE.jsonl]

Runs one `side_by_side.py` configuration twice, the original code and then
tf_simclr, each in its own process with the same commands `side_by_side.py`
uses, and records a TensorFlow profiler trace of one timed window on each
side (the original: between its second and third checkpoint saves;
tf_simclr: its second timed `trainer.train` call). From each trace it sums the
time spent inside TensorFlow ops by kind (convolutions forward, convolution
gradients, batch norm, matmul, ...) and prints both sides' shares.

Why: if convolutions take a share `c` of the original's step and run the same
kernels on both sides (same TensorFlow build, same shapes, same maths), then
removing everything else would make tf_simclr at most `1 / c` times faster.
The printed "ceiling" is that bound; it says how much a same-maths speed-up
can buy before any work is done.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Op kinds, matched against the op type of each traced op (oneDNN's rewritten
# names included, e.g. _MklNativeConv2D, _MklFusedBatchNormV3).
_KINDS = (
    ("conv_backprop_filter", ("Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter")),
    ("conv_backprop_input", ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput")),
    ("conv_forward", ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D")),
    ("batch_norm", ("FusedBatchNorm", "BatchNorm")),
    ("matmul", ("MatMul", "Einsum")),
    ("reduction", ("Sum", "Mean", "Max", "Prod", "Min", "ArgMax")),
    ("pooling", ("Pool",)),
    ("input_pipeline", ("Iterator", "Dataset", "DecodeJpeg", "Image",
                        "RGBToHSV", "HSVToRGB", "Crop")),
)
CONV_KINDS = ("conv_forward", "conv_backprop_input", "conv_backprop_filter")


def op_kind(op_type: str) -> str:
  """The kind of a traced op, from its type; "other" when none matches."""
  bare = op_type.lstrip("_").replace("MklNative", "").replace("Mkl", "")
  for kind, needles in _KINDS:
    if any(n.lstrip("_") in bare for n in needles):
      return kind
  return "other"


def _xplane_files(trace_dir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                          recursive=True))


def op_seconds_by_kind(trace_dir: str) -> dict:
  """Seconds inside TF ops by kind, summed over the host threads.

  The TF executor records one event per op run, named "name:type". Where
  events of one thread nest, only the innermost counts its own time, so
  nothing is counted twice. The trace span runs from the first op's start to
  the last op's end.
  """
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  files = _xplane_files(trace_dir)
  if not files:
    raise RuntimeError(f"no *.xplane.pb under {trace_dir!r}")
  space = xplane_pb2.XSpace()
  with open(files[-1], "rb") as f:
    space.ParseFromString(f.read())
  totals: dict[str, float] = collections.defaultdict(float)
  by_type: dict[str, float] = collections.defaultdict(float)
  span = [float("inf"), 0.0]
  conv_intervals = []
  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    names = {k: m.name for k, m in plane.event_metadata.items()}
    for line in plane.lines:
      events = []
      for e in line.events:
        name = names.get(e.metadata_id, "")
        # Executor internals ("ExecutorState::Process") wrap whole threads'
        # work; only "op_name:OpType" events are ops.
        # A tf.function call op ("__inference_...") runs its ops on other
        # threads, so it has no children here to subtract: leave it out.
        if (":" not in name or "::" in name or name.startswith("$") or
            "__inference" in name):
          continue
        start = line.timestamp_ns * 1e-9 + e.offset_ps * 1e-12
        events.append((start, start + e.duration_ps * 1e-12,
                       name.rsplit(":", 1)[1]))
      events.sort(key=lambda ev: (ev[0], -ev[1]))
      # Self time: subtract each event's direct children.
      stack: list[list] = []
      finished = []
      for start, end, op_type in events:
        while stack and stack[-1][1] <= start:
          finished.append(stack.pop())
        if stack:
          stack[-1][3] += min(end, stack[-1][1]) - start
        stack.append([start, end, op_type, 0.0])
      finished.extend(stack)
      for start, end, op_type, children in finished:
        own = max(0.0, end - start - children)
        kind = op_kind(op_type)
        totals[kind] += own
        if kind in CONV_KINDS:
          conv_intervals.append((start, end))
        by_type[op_type] += own
        span[0], span[1] = min(span[0], start), max(span[1], end)
  if not totals:
    raise RuntimeError(f"no TensorFlow op events in {files[-1]!r}")
  top = sorted(by_type.items(), key=lambda kv: -kv[1])[:12]
  return {"seconds_by_kind": dict(totals), "top_op_types": dict(top),
          "trace_span_seconds": span[1] - span[0],
          "conv_busy_seconds": _union_seconds(conv_intervals)}


def _union_seconds(intervals: list) -> float:
  """Wall time during which at least one of `intervals` runs."""
  busy, reach = 0.0, float("-inf")
  for start, end in sorted(intervals):
    if end > reach:
      busy += end - max(start, reach)
      reach = end
  return busy


def _summarize(profile: dict) -> dict:
  total = sum(profile["seconds_by_kind"].values())
  conv = sum(profile["seconds_by_kind"].get(k, 0.0) for k in CONV_KINDS)
  return {"op_seconds": total, "conv_seconds": conv,
          "conv_share": conv / total,
          "span_seconds": profile["trace_span_seconds"],
          "conv_busy_seconds": profile["conv_busy_seconds"],
          "conv_busy_share": (profile["conv_busy_seconds"] /
                              profile["trace_span_seconds"]),
          "shares": {k: v / total
                     for k, v in sorted(profile["seconds_by_kind"].items())}}


def _trace_original(trace_dir: str, runner_argv: list[str]) -> int:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import original_runner  # pylint: disable=import-outside-toplevel
  save = tf.train.CheckpointManager.save
  calls = [0]

  def traced_save(self, *a, **k):
    calls[0] += 1
    if calls[0] == 3:
      tf.profiler.experimental.stop()
    path = save(self, *a, **k)
    if calls[0] == 2:
      tf.profiler.experimental.start(trace_dir)
    return path

  tf.train.CheckpointManager.save = traced_save
  return original_runner.main(runner_argv)


def _trace_ours(trace_dir: str, bench_argv: list[str]) -> int:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import bench_train  # pylint: disable=import-outside-toplevel
  build = bench_train._build_trainer  # pylint: disable=protected-access

  def build_traced(*a, **k):
    trainer, *rest = build(*a, **k)
    train, calls = trainer.train, [0]

    def traced_train(steps):
      calls[0] += 1
      # Call 1 is the warm-up; call 3 is the second timed window.
      if calls[0] != 3:
        return train(steps)
      tf.profiler.experimental.start(trace_dir)
      try:
        out = train(steps)
        tf.nest.map_structure(
            lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
        return out
      finally:
        tf.profiler.experimental.stop()

    trainer.train = traced_train
    return (trainer, *rest)

  bench_train._build_trainer = build_traced  # pylint: disable=protected-access
  return bench_train.main(bench_argv)


def _run_side(command: list[str], side: str, trace_dir: str) -> dict:
  # command[1] is the script; run this file in its place with the same flags.
  argv = [command[0], os.path.abspath(__file__), f"--_trace_side={side}",
          f"--_trace_dir={trace_dir}", "--", *command[2:]]
  proc = subprocess.run(argv, capture_output=True, text=True,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                        check=False)
  if proc.returncode:
    raise RuntimeError(f"{side} failed (exit {proc.returncode}):\n"
                       + (proc.stdout + proc.stderr)[-3000:])
  return op_seconds_by_kind(trace_dir)


def format_table(original: dict, ours: dict) -> str:
  kinds = sorted(set(original["shares"]) | set(ours["shares"]),
                 key=lambda k: -original["shares"].get(k, 0.0))
  lines = ["| op kind | original | tf_simclr |", "|---|---|---|"]
  for kind in kinds:
    lines.append(f"| {kind} | {original['shares'].get(kind, 0.0):.1%} | "
                 f"{ours['shares'].get(kind, 0.0):.1%} |")
  lines.append(f"| **all convolutions** | **{original['conv_share']:.1%}** | "
               f"**{ours['conv_share']:.1%}** |")
  lines.append(f"| op seconds in the traced window | "
               f"{original['op_seconds']:.1f} s | {ours['op_seconds']:.1f} s |")
  lines.append(f"| wall time with a convolution running | "
               f"{original['conv_busy_share']:.1%} of "
               f"{original['span_seconds']:.1f} s | "
               f"{ours['conv_busy_share']:.1%} of {ours['span_seconds']:.1f} s |")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  import side_by_side  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--original_dir", required=True)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--config", default="r50sk_pretrain",
                 choices=sorted(side_by_side.CONFIGURATIONS))
  p.add_argument("--precision", default="float32")
  p.add_argument("--steps_per_window", type=int, default=2)
  p.add_argument("--ours_flags", default=None,
                 help="space-separated bench_train.py flags in place of the "
                 "configuration's own")
  p.add_argument("--python", default=sys.executable)
  p.add_argument("--out", default=None, help="append the result as JSON")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0].startswith("--_trace_side="):
    side, trace_dir = argv[0].split("=", 1)[1], argv[1].split("=", 1)[1]
    inner = argv[3:]
    return (_trace_original if side == "original" else _trace_ours)(
        trace_dir, inner)
  import side_by_side  # pylint: disable=import-outside-toplevel
  args = build_parser().parse_args(argv)
  cfg = side_by_side.CONFIGURATIONS[args.config]
  if args.ours_flags is not None:
    flags = tuple(args.ours_flags.split())
    cfg = side_by_side.dataclasses.replace(cfg, ours=flags, ours_mixed=flags)
  # side_by_side's commands read these from its own parsed flags.
  run_args = argparse.Namespace(
      python=args.python, original_dir=args.original_dir,
      data_dir=args.data_dir, steps_per_window=args.steps_per_window,
      windows=3)
  machine = side_by_side.cpu_description()
  print(f"CPU: {machine['cpu']}, {machine['cores']} cores, "
        f"{' '.join(machine['vector_extensions'])}", flush=True)
  with tempfile.TemporaryDirectory(prefix="op_profile_") as work:
    original = _summarize(_run_side(
        side_by_side._original_command(  # pylint: disable=protected-access
            run_args, cfg, os.path.join(work, "model"),
            os.path.join(work, "report.json")),
        "original", os.path.join(work, "trace_original")))
    print("original traced", flush=True)
    ours = _summarize(_run_side(
        side_by_side._ours_command(run_args, cfg, args.precision),  # pylint: disable=protected-access
        "ours", os.path.join(work, "trace_ours")))
  print(f"\n{cfg.describe()}, original float32 against tf_simclr "
        f"{args.precision} {' '.join(cfg.flags_for(args.precision))}:\n")
  print(format_table(original, ours))
  # A step can't end before its convolutions have run, so the original's
  # window over its convolution-busy wall time bounds any same-kernel gain.
  ceiling = original["span_seconds"] / original["conv_busy_seconds"]
  print(f"\nSame-maths ceiling: a convolution ran during "
        f"{original['conv_busy_share']:.1%} of the original's traced window, "
        f"so with the same convolution kernels tf_simclr can be at most "
        f"{ceiling:.2f}x faster (by op time: {1 / original['conv_share']:.2f}x).")
  if args.out:
    with open(args.out, "a") as f:
      f.write(json.dumps({"bench": "op_profile", "config": args.config,
                          "precision": args.precision,
                          "ours_flags": list(cfg.flags_for(args.precision)),
                          "machine": machine,
                          "original": original, "ours": ours,
                          "ceiling": ceiling}) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
