"""Plumbing shared by the per-stage orbit trainers (pretrain/finetune/distill).

Only the mechanics live here (`StepTrainer`: metric objects, the optional XLA
wrapper, the gradient application, the end-of-loop report); each stage keeps
its own loss and its own metric names.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional, Sequence

import orbit
import tensorflow as tf
import tf_keras as keras

from tf_simclr.training import optimizer as optimizer_lib


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


LEARNING_RATE = "learning_rate"


class StepTrainer(orbit.StandardTrainer):
  """What the stage trainers share around their own loss.

  A subclass defines `metric_names`, `_loss_and_gradients(...) ->
  (gradients, stats)` and a `replica_step`, and sets what those read before
  calling this constructor; this class holds the model and optimizer,
  validates the weight-decay settings, makes the running means, wraps the
  forward and backward pass for XLA, and reports the means and the learning
  rate at the end of each loop. Subclasses take these arguments first and
  forward them unchanged.

  Args:
    strategy: the distribution strategy the model and optimizer live in.
    model: the trained model.
    optimizer: a tf_keras legacy optimizer whose `iterations` is the step.
    train_dataset: the distributed dataset (or a structure of them) the
      trainer's `train_step` reads.
    optimizer_name: 'lars', 'momentum' or 'adam' (weight-decay semantics).
    weight_decay: the decay rate.
    jit_compile: XLA-compile the per-replica forward and backward pass (one
      replica only).
  """

  def __init__(self,
               strategy: tf.distribute.Strategy,
               model: keras.Model,
               optimizer: keras.optimizers.legacy.Optimizer,
               train_dataset,
               optimizer_name: str,
               weight_decay: float,
               jit_compile: bool = False):
    if optimizer_name not in optimizer_lib.OPTIMIZERS:
      raise ValueError(f"optimizer_name must be one of "
                       f"{optimizer_lib.OPTIMIZERS}, got {optimizer_name!r}")
    if weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    self.strategy = strategy
    self.model = model
    self.optimizer = optimizer
    self.optimizer_name = optimizer_name
    self.weight_decay = weight_decay
    self.jit_compile = jit_compile
    self.metrics = make_mean_metrics(strategy, self.metric_names())
    self._forward_backward = maybe_xla(self._loss_and_gradients, jit_compile)
    super().__init__(
        train_dataset,
        options=orbit.StandardTrainerOptions(use_tf_while_loop=True))

  def metric_names(self) -> Sequence[str]:
    """The running means, by stats key."""
    raise NotImplementedError

  def always_reported(self) -> Sequence[str]:
    """Metrics reported even when a loop never updated them."""
    return self.metric_names()

  def _loss_and_gradients(self, *args):
    raise NotImplementedError

  def _apply(self, gradients, stats: dict[str, tf.Tensor]
             ) -> dict[str, tf.Tensor]:
    """Applies the gradients to the model and feeds `stats` to the metrics."""
    stats[GRADIENT_NORM] = apply_gradients(self.optimizer, gradients,
                                           self.model.trainable_variables)
    update_metrics(self.metrics, stats)
    return stats

  def train_loop_begin(self):
    reset_metrics(self.metrics)

  def train_step(self, iterator):
    self.strategy.run(self.replica_step, args=(next(iterator),))

  def train_loop_end(self):
    results = metric_results(self.metrics, self.always_reported())
    results[LEARNING_RATE] = learning_rate_value(self.optimizer)
    return results
