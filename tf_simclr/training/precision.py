"""Mixed precision: the Keras dtype policy a model is built under, and loss
scaling for float16.

Variables stay float32 under every policy. Losses, softmax and batch-norm
statistics run in float32 (the losses upcast half-precision inputs; Keras
batch norm keeps float32 statistics), so only convolutions and dense layers
compute in 16 bits.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(
        f"precision must be one of {PRECISIONS}, got {precision!r}")
  return precision


@contextlib.contextmanager
def policy_scope(precision: str) -> Iterator[None]:
  """Layers created inside take `precision` as their dtype policy.

  The global policy is restored on exit, so a float32 teacher and a mixed
  precision student can be built in one process.
  """
  check_precision(precision)
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(precision)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.legacy.Optimizer,
                   precision: str) -> keras.optimizers.legacy.Optimizer:
  """Adds dynamic loss scaling for float16 (bfloat16 has float32's range).

  Call inside the strategy scope that owns `optimizer`.
  """
  if check_precision(precision) != "mixed_float16":
    return optimizer
  return keras.mixed_precision.LossScaleOptimizer(optimizer, dynamic=True)


def _loss_scaled(optimizer) -> bool:
  return isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)


def scale_loss(optimizer, loss: tf.Tensor) -> tf.Tensor:
  """`loss` times the current loss scale (unchanged without loss scaling)."""
  return optimizer.get_scaled_loss(loss) if _loss_scaled(optimizer) else loss


def unscale_gradients(optimizer, gradients: Sequence[Optional[tf.Tensor]]
                      ) -> list[Optional[tf.Tensor]]:
  """Undoes `scale_loss` on gradients; None entries stay None."""
  if not _loss_scaled(optimizer):
    return list(gradients)
  present = [g for g in gradients if g is not None]
  unscaled = iter(optimizer.get_unscaled_gradients(present))
  return [None if g is None else next(unscaled) for g in gradients]
