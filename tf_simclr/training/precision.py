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


_CPU_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bfloat16(cpuinfo_path: str = "/proc/cpuinfo") -> Optional[str]:
  """What computes bfloat16 natively on this machine, or None.

  A GPU of compute capability 8.0 or newer does; on a CPU, oneDNN needs AMX
  or AVX512_BF16 instructions, without which bfloat16 is emulated and is no
  faster than float32.
  """
  for gpu in tf.config.list_physical_devices("GPU"):
    capability = tf.config.experimental.get_device_details(gpu).get(
        "compute_capability")
    if capability and tuple(capability) >= (8, 0):
      return f"GPU compute capability {capability[0]}.{capability[1]}"
  try:
    with open(cpuinfo_path) as f:
      flags = next((line.split(":", 1)[1].split() for line in f
                    if line.startswith("flags")), [])
  except OSError:
    return None
  found = [flag for flag in _CPU_BFLOAT16_FLAGS if flag in flags]
  return f"CPU {'+'.join(found)}" if found else None


def describe_precision(precision: str, use_tpu: bool = False,
                       native: Optional[str] = None) -> str:
  """One log line: the precision in use and whether the hardware suits it.

  Args:
    precision: the training precision.
    use_tpu: TPUs compute in bfloat16 natively.
    native: `native_bfloat16()`'s answer (looked up when None and needed).
  """
  check_precision(precision)
  if use_tpu:
    native = "TPU"
  elif native is None:
    native = native_bfloat16()
  if precision == "mixed_bfloat16":
    if native:
      return f"precision mixed_bfloat16 (native bfloat16: {native})"
    return ("precision mixed_bfloat16 without native bfloat16 on this "
            "machine: emulated, expect no speed-up over float32")
  if precision == "float32" and native:
    return (f"precision float32; this machine computes bfloat16 natively "
            f"({native}), where --precision=mixed_bfloat16 usually trains "
            "faster")
  return f"precision {precision}"
