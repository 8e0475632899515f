"""1x1 convolutions against the same products written as matrix products.

  python bench/conv1x1_matmul.py [--views=256] [--repeats=5]

For each 1x1 convolution shape of a ResNet-50 bottleneck with the CIFAR stem
(32-px views), times forward plus both gradients (input and filter) of
`tf.nn.conv2d` and of `tf.matmul` on the flattened pixels, which compute the
same sums. The two are interleaved `--repeats` times after two untimed calls
each; medians are printed with matmul time / convolution time per shape and
the ratio over all shapes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

# (height, width, in channels, out channels) of R50's bottleneck 1x1 convs.
SHAPES = ((32, 32, 64, 256), (32, 32, 256, 64), (16, 16, 128, 512),
          (16, 16, 512, 128), (8, 8, 256, 1024), (8, 8, 1024, 256),
          (4, 4, 512, 2048), (4, 4, 2048, 512))


def make_step(kind: str, n: int, h: int, w: int, cin: int, cout: int):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  x = tf.random.normal([n, h, w, cin])
  kernel = tf.Variable(tf.random.normal([1, 1, cin, cout]) * 0.05)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch(x)
      if kind == "conv":
        y = tf.nn.conv2d(x, kernel, 1, "SAME")
      else:
        y = tf.reshape(tf.matmul(tf.reshape(x, [-1, cin]),
                                 tf.reshape(kernel, [cin, cout])),
                       [n, h, w, cout])
      loss = tf.reduce_sum(y * y)
    grad_x, grad_k = tape.gradient(loss, [x, kernel])
    return tf.reduce_sum(grad_x) + tf.reduce_sum(grad_k)

  return step


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--views", type=int, default=256)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  totals = {"conv": 0.0, "matmul": 0.0}
  for h, w, cin, cout in SHAPES:
    steps = {k: make_step(k, args.views, h, w, cin, cout) for k in totals}
    for step in steps.values():
      step().numpy()
      step().numpy()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
      for kind, step in steps.items():
        start = time.perf_counter()
        step().numpy()
        times[kind].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    for kind in totals:
      totals[kind] += median[kind]
    print(f"{args.views}x{h}x{w}, {cin}->{cout}: conv {median['conv']:.4f} s, "
          f"matmul {median['matmul']:.4f} s, matmul/conv time "
          f"{median['matmul'] / median['conv']:.3f}", flush=True)
  print(f"all shapes: conv {totals['conv']:.3f} s, matmul "
        f"{totals['matmul']:.3f} s; matmul is "
        f"{totals['conv'] / totals['matmul']:.3f}x as fast")
  return 0


if __name__ == "__main__":
  sys.exit(main())
