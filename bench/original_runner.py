"""Runs the original SimCLR TF2 code (google-research/simclr `tf2/`) on a local
image folder and reports its training throughput, for `side_by_side.py`.

  python bench/original_runner.py --original_dir=PATH/simclr/tf2 \
      --data_dir=ROOT --report=OUT.json --warmup_windows=1 -- \
      --train_mode=pretrain --resnet_depth=18 ... --checkpoint_steps=1

The original code reads only TFDS datasets; here `tfds.builder` is replaced by
`tfds.ImageFolder(ROOT)` (`ROOT/<split>/<class>/*.jpg`), so it trains on the
same JPEGs as tf_simclr. Nothing of the original code is changed or copied:
its `run.py` is imported from `--original_dir` and run with the flags after
`--`.

Timing: the original's loop runs `--checkpoint_steps` steps in one
`tf.function` call and then saves a checkpoint, so the time from the end of
one save to the start of the next is one window of training with the
checkpoint I/O left out. The first `--warmup_windows` windows (tracing,
buffer fill) are not timed. The report holds every window and the images/s of
the timed ones (each source image counted once, as tf_simclr's benchmark
does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse(argv):
  if "--" not in argv:
    raise SystemExit("original_runner.py: put the original code's flags "
                     "after a bare --")
  split = argv.index("--")
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--original_dir", required=True,
                 help="folder holding the original code's run.py")
  p.add_argument("--data_dir", required=True,
                 help="image folder root: ROOT/<split>/<class>/*.jpg")
  p.add_argument("--report", required=True, help="JSON report path")
  p.add_argument("--warmup_windows", type=int, default=1)
  p.add_argument("--batch_size", type=int, required=True,
                 help="the original's --train_batch_size, for images/s")
  p.add_argument("--steps_per_window", type=int, required=True,
                 help="the original's --checkpoint_steps")
  return p.parse_args(argv[:split]), argv[split + 1:]


def main(argv) -> int:
  args, original_flags = _parse(argv)
  original_dir = os.path.abspath(args.original_dir)
  if not os.path.isfile(os.path.join(original_dir, "run.py")):
    raise SystemExit(f"original_dir {original_dir!r} holds no run.py")
  # The original code is written against Keras 2: tf.keras must be tf_keras.
  os.environ["TF_USE_LEGACY_KERAS"] = "1"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  import tensorflow_datasets as tfds
  from absl import app

  folder = tfds.ImageFolder(os.path.abspath(args.data_dir))
  folder.download_and_prepare = lambda *a, **k: None
  tfds.builder = lambda *a, **k: folder

  marks: list[tuple[float, float]] = []  # (save start, save end)
  save = tf.train.CheckpointManager.save

  def timed_save(self, *a, **k):
    start = time.perf_counter()
    path = save(self, *a, **k)
    marks.append((start, time.perf_counter()))
    return path

  tf.train.CheckpointManager.save = timed_save
  # What the original's own entry point sets before main().
  tf.config.set_soft_device_placement(True)
  sys.path.insert(0, original_dir)
  import run as original  # pylint: disable=import-error,import-outside-toplevel

  status = 0
  try:
    app.run(original.main, argv=["run.py", *original_flags])
  except SystemExit as e:
    status = e.code or 0
  windows = [marks[i][0] - marks[i - 1][1] for i in range(1, len(marks))]
  timed = windows[max(0, args.warmup_windows - 1):]
  report = {"status": status, "windows_seconds": windows,
            "timed_windows": len(timed)}
  if timed:
    report["images_per_sec"] = (args.batch_size * args.steps_per_window *
                                len(timed) / sum(timed))
  with open(args.report, "w") as f:
    json.dump(report, f)
  return int(status)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
