"""XLA:CPU versus the default (oneDNN) kernel for the ResNet's 3x3 convolutions.

Times one stride-1 SAME 3x3 convolution (forward only) as a plain
`tf.function` and as a `jit_compile=True` one, for the feature-map sizes of a
CIFAR-stem ResNet. Shows why `--jit_compile` slows CPU training down.

  python bench/xla_conv.py --batch_size=64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (spatial side, channels): R18 blocks at 32 px and 16 px input.
SHAPES = ((32, 64), (16, 128), (8, 256), (4, 512), (2, 512), (2, 256))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  import tensorflow as tf

  def conv(x, w):
    return tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))

  plain = tf.function(conv)
  xla = tf.function(conv, jit_compile=True)
  for side, channels in SHAPES:
    x = tf.random.uniform([args.batch_size, side, side, channels])
    w = tf.random.normal([3, 3, channels, channels])
    times = {}
    for name, fn in (("default", plain), ("xla", xla)):
      fn(x, w).numpy()  # Trace / compile.
      runs = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        fn(x, w).numpy()
        runs.append(time.perf_counter() - start)
      times[name] = statistics.median(runs) * 1000
    record = {"bench": "xla_conv", "batch": args.batch_size, "side": side,
              "channels": channels, "default_ms": round(times["default"], 2),
              "xla_ms": round(times["xla"], 2),
              "xla_over_default": round(times["xla"] / times["default"], 2)}
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
