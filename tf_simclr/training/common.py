"""Plumbing shared by the per-stage orbit trainers (pretrain/finetune/distill).

Only the mechanics live here (metric objects, the optional XLA wrapper, the
gradient application, the end-of-loop report); each stage keeps its own loss
and its own metric names.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional, Sequence

import tensorflow as tf
import tf_keras as keras


def make_mean_metrics(strategy: tf.distribute.Strategy,
                      names: Sequence[str]) -> dict[str, keras.metrics.Mean]:
  """One float32 running mean per name, created in the strategy's scope."""
  with strategy.scope():
    return {name: keras.metrics.Mean(name, dtype=tf.float32)
            for name in names}


def reset_metrics(metrics: Mapping[str, keras.metrics.Metric]) -> None:
  for metric in metrics.values():
    metric.reset_states()


def update_metrics(metrics: Mapping[str, keras.metrics.Metric],
                   stats: Mapping[str, tf.Tensor]) -> None:
  """Feeds each per-replica scalar in `stats` to the metric of that name."""
  for name, value in stats.items():
    metrics[name].update_state(value)


def maybe_xla(fn: Callable, jit_compile: bool) -> Callable:
  """`fn` itself, or `fn` as an XLA-compiled nested `tf.function`.

  A nested tf.function is only safe (and only useful) when XLA-compiled:
  uncompiled, batch norm's moving-average updates inside it hit merge_call
  under MirroredStrategy. Compiled, it still may not hold a cross-replica op
  (NT-Xent's gather, synchronised batch norm, gradient aggregation) under
  MirroredStrategy on CPUs, so training steps use it on one replica only.

  Args:
    fn: a per-replica function (a forward and backward pass, an eval step).
    jit_compile: compile it with XLA.
  """
  return tf.function(fn, jit_compile=True) if jit_compile else fn


GRADIENT_NORM = "gradient_norm"


def apply_gradients(optimizer: keras.optimizers.legacy.Optimizer,
                    gradients: Sequence[Optional[tf.Tensor]],
                    variables: Sequence[tf.Variable]) -> tf.Tensor:
  """Applies gradients, skipping variables the loss does not reach.

  Returns:
    The global norm of this replica's gradients. It is the finiteness check
    that matters: a NaN can reach the weights while the loss stays finite
    (ReLU maps NaN to 0, so a poisoned network can output constants).
  """
  pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
  norm = tf.linalg.global_norm([g for g, _ in pairs])
  optimizer.apply_gradients(pairs)
  return norm


def learning_rate_value(optimizer: keras.optimizers.legacy.Optimizer
                        ) -> tf.Tensor:
  """The learning rate the optimizer uses at its current iteration."""
  learning_rate = optimizer.learning_rate
  if callable(learning_rate):
    learning_rate = learning_rate(optimizer.iterations)
  return tf.convert_to_tensor(learning_rate)


def metric_results(metrics: Mapping[str, keras.metrics.Mean],
                   always_reported: Iterable[str]) -> dict[str, tf.Tensor]:
  """Results of the metrics in `always_reported` and of every updated one.

  Optional metrics (e.g. supervised accuracy when there are no labels) that
  were never updated in this loop are left out rather than reported as 0.

  Args:
    metrics: the trainer's metrics by name.
    always_reported: names reported even when never updated.
  """
  always = set(always_reported)
  return {name: metric.result() for name, metric in metrics.items()
          if name in always or metric.count > 0}
