"""Where a pretraining or fine-tuning step spends its time.

Builds the same trainer as `bench_train.py` (same flags) and times, each as
its own compiled function run through `strategy.run` on a fixed batch:

  forward       model(images, training=True)
  fwd_bwd       the trainer's loss and gradients (what jit_compile wraps)
  optimizer     optimizer.apply_gradients on fixed gradients (LARS)
  train_step    trainer.train(1): the whole step, input pipeline included

The components are interleaved (forward, fwd_bwd, optimizer, train_step,
forward, ...) `--repeats` times so that load from other processes spreads
over all of them; medians are reported. `--fused_bn_ab=on` also times
fwd_bwd with the convolution batch norms switched to the fused kernel, in
the same process, interleaved with the non-fused one.

  python bench/profile_step.py --resnet_depth=18 --batch_size=256 \
      --jit_compile=off --repeats=2 --fused_bn_ab=on
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import bench_train


def main() -> int:
  parser = bench_train.build_parser()
  parser.add_argument("--repeats", type=bench_train._positive_int, default=2)  # pylint: disable=protected-access
  parser.add_argument("--fused_bn_ab", type=bench_train._on_off, default=False)  # pylint: disable=protected-access
  args = parser.parse_args()
  if args.stage == "pipeline":
    print("error: --stage must be pretrain or finetune", file=sys.stderr)
    return 1
  result = {"bench": "profile_step", "config": {
      k: getattr(args, k) for k in bench_train._CONFIG_KEYS}}  # pylint: disable=protected-access
  result["load_avg_start"] = bench_train._load_average()  # pylint: disable=protected-access
  result.update(bench_train._configure_tensorflow(args))  # pylint: disable=protected-access
  import tensorflow as tf
  import tf_keras as keras
  from tf_simclr.training import strategy as strategy_lib

  keras.utils.set_random_seed(args.seed)
  strategy = strategy_lib.build_strategy(args.distribution)
  source = bench_train._make_source(args)  # pylint: disable=protected-access
  trainer, optimizer, _ = bench_train._build_trainer(  # pylint: disable=protected-access
      args, strategy, source, args.stage, result)
  model = trainer.model
  size, batch = args.image_size, args.batch_size
  rows = 2 * batch if args.stage == "pretrain" else batch
  images = tf.random.uniform([rows, size, size, 3])
  labels = tf.zeros([batch], tf.int32)
  variables = model.trainable_variables

  @tf.function
  def forward():
    return strategy.run(
        lambda x: tf.reduce_sum(model(x, training=True)["proj_head_output"]),
        args=(images,))

  def make_fwd_bwd():
    # trainer._forward_backward is the XLA-wrapped one when jit is on.
    @tf.function
    def fwd_bwd():
      def step(x, y):
        gradients, _ = trainer._forward_backward(x, y)  # pylint: disable=protected-access
        return tf.add_n([tf.reduce_sum(g) for g in gradients if g is not None])
      return strategy.run(step, args=(images, labels))
    return fwd_bwd

  fwd_bwd = make_fwd_bwd()
  fixed_gradients = [tf.ones_like(v) * 1e-6 for v in variables]

  @tf.function
  def apply():
    strategy.run(lambda: optimizer.apply_gradients(
        zip(fixed_gradients, variables)))
    return optimizer.iterations.read_value()

  parts = {"forward": forward, "fwd_bwd": fwd_bwd, "optimizer": apply,
           "train_step": lambda: trainer.train(tf.constant(1, tf.int32))}
  if args.fused_bn_ab:
    # Trace the non-fused functions first: tf.function keeps that graph.
    for fn in parts.values():
      fn()
    result["fused_bn_layers"] = bench_train._use_fused_batch_norm(model)  # pylint: disable=protected-access
    parts["fwd_bwd_fused_bn"] = make_fwd_bwd()

  times = {name: [] for name in parts}
  first = {}
  for name, fn in parts.items():
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t,
                          fn())
    first[name] = round(time.perf_counter() - start, 2)
  for _ in range(args.repeats):
    for name, fn in parts.items():
      start = time.perf_counter()
      tf.nest.map_structure(
          lambda t: t.numpy() if hasattr(t, "numpy") else t, fn())
      times[name].append(time.perf_counter() - start)
  result["first_call_seconds"] = first
  result["median_seconds"] = {k: statistics.median(v)
                              for k, v in times.items()}
  result["all_seconds"] = {k: [round(x, 3) for x in v]
                           for k, v in times.items()}
  step = result["median_seconds"]["train_step"]
  result["share_of_step"] = {k: v / step
                             for k, v in result["median_seconds"].items()}
  result["peak_rss_gb"] = bench_train._peak_rss_gb()  # pylint: disable=protected-access
  result["load_avg_end"] = bench_train._load_average()  # pylint: disable=protected-access
  shown = ", ".join(f"{k} {v:.2f}s ({result['share_of_step'][k]:.0%})"
                    for k, v in result["median_seconds"].items())
  print(f"profile {args.stage} R{args.resnet_depth} b{batch} "
        f"jit={'on' if args.jit_compile else 'off'}: {shown}; "
        f"load avg {result['load_avg_start']} -> {result['load_avg_end']}")
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
