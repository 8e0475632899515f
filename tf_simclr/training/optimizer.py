"""Learning-rate schedule, optimizers and weight decay (SPEC §4).

The optimizers and schedule building blocks come from tf-models-official
(`official.modeling.optimization`); this module only wires them together with
the original code's step arithmetic and variable selection rules. Every
optimizer is a tf_keras *legacy* optimizer, because the Model Garden LARS is
one and mixing the two optimizer generations would give checkpoints with
different slot layouts depending on the chosen optimizer.

The step counters follow the original code to the letter, including its
quirks (SPEC §9 Q9): warmup steps are floored, the total adds one step even
when the epochs divide evenly, and `sqrt` scaling has no /256 base.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence, Union

from official.modeling.optimization import lars
from official.modeling.optimization import lr_schedule
import tensorflow as tf
import tf_keras as keras

OPTIMIZER_LARS = "lars"
OPTIMIZER_MOMENTUM = "momentum"
OPTIMIZER_ADAM = "adam"
OPTIMIZERS = (OPTIMIZER_LARS, OPTIMIZER_MOMENTUM, OPTIMIZER_ADAM)

SCALING_LINEAR = "linear"
SCALING_SQRT = "sqrt"
SCALINGS = (SCALING_LINEAR, SCALING_SQRT)

# Regexes searched in variable names. The model names its BN layers with the
# Keras default (`batch_normalization...`) and its supervised head
# `head_supervised`, so these select BN gamma/beta, every bias and the whole
# supervised head by role, as the original code's exclusion list did.
DEFAULT_EXCLUDE = ("batch_normalization", "bias", "head_supervised")

_BN_NAME = "batch_normalization"
_BIAS_NAME = "bias"
_SUPERVISED_HEAD_NAME = "head_supervised"

LearningRate = Union[float, keras.optimizers.schedules.LearningRateSchedule]


def scaled_learning_rate(base_learning_rate: float, global_batch_size: int,
                         scaling: str) -> float:
  """Peak learning rate after batch-size scaling.

  Args:
    base_learning_rate: The configured (unscaled) learning rate.
    global_batch_size: Images per view summed over all replicas.
    scaling: `linear` (lr * B / 256) or `sqrt` (lr * sqrt(B), without the /256
      base a textbook square-root rule would use; quirk Q9).

  Returns:
    The learning rate reached at the end of warmup.
  """
  if base_learning_rate < 0:
    raise ValueError(
        f"base_learning_rate must be >= 0, got {base_learning_rate!r}")
  _check_positive("global_batch_size", global_batch_size)
  if scaling == SCALING_LINEAR:
    return base_learning_rate * global_batch_size / 256.0
  if scaling == SCALING_SQRT:
    return base_learning_rate * math.sqrt(global_batch_size)
  raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")


def warmup_steps(warmup_epochs: float, num_examples: int,
                 global_batch_size: int) -> int:
  """Number of linear-warmup steps, floor(epochs * N / B) (quirk Q9).

  Args:
    warmup_epochs: Warmup length in (possibly fractional) epochs.
    num_examples: Training examples per epoch.
    global_batch_size: Images per view summed over all replicas.

  Returns:
    The warmup length in optimizer steps.
  """
  if warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
  _check_positive("num_examples", num_examples)
  _check_positive("global_batch_size", global_batch_size)
  return int(math.floor(warmup_epochs * num_examples / global_batch_size))


def total_train_steps(num_examples: int, global_batch_size: int,
                      train_epochs: float, train_steps: int = 0) -> int:
  """Total optimizer steps of a run.

  Args:
    num_examples: Training examples per epoch.
    global_batch_size: Images per view summed over all replicas.
    train_epochs: Run length in epochs; ignored when `train_steps` > 0.
    train_steps: Explicit run length in steps; 0 means "derive from epochs".

  Returns:
    `train_steps` if positive, else floor(N * epochs / B) + 1 (the original
    adds the extra step even when the division is exact; quirk Q9).
  """
  if train_steps < 0:
    raise ValueError(f"train_steps must be >= 0, got {train_steps!r}")
  if train_steps > 0:
    return int(train_steps)
  if train_epochs < 0:
    raise ValueError(f"train_epochs must be >= 0, got {train_epochs!r}")
  _check_positive("num_examples", num_examples)
  _check_positive("global_batch_size", global_batch_size)
  return int(math.floor(num_examples * train_epochs / global_batch_size)) + 1


# Bounds of the batch derived from a small labelled set (`small_set_batch_size`).
MAX_DERIVED_BATCH = 256
MIN_DERIVED_BATCH = 16


def small_set_batch_size(num_examples: int, replicas: int = 1) -> int:
  """The global batch a supervised stage uses when none is given.

  The largest power of two not above half the training set, within
  [MIN_DERIVED_BATCH, MAX_DERIVED_BATCH], rounded down to a multiple of
  `replicas` (at least one example per replica). A batch of half the set
  leaves at least two different batches per epoch; with the sqrt
  learning-rate scaling the learning rate follows, so 143 labelled digits
  train at batch 64 (peak 0.05 * 8 = 0.4) rather than at one batch of 256
  holding every image about twice.

  Args:
    num_examples: Training examples per epoch.
    replicas: Replicas in sync; the batch must divide evenly among them.
  """
  _check_positive("num_examples", num_examples)
  _check_positive("replicas", replicas)
  batch = 2 ** max(0, int(math.floor(math.log2(max(1, num_examples / 2)))))
  batch = min(MAX_DERIVED_BATCH, max(MIN_DERIVED_BATCH, batch))
  return max(replicas, batch - batch % replicas)


def epoch_steps(num_examples: int, global_batch_size: int) -> int:
  """Steps per epoch, round(N / B) but at least one.

  Args:
    num_examples: Training examples per epoch.
    global_batch_size: Images per view summed over all replicas.

  Returns:
    The number of steps the original code treats as one epoch (it sizes the
    checkpoint and summary period with it).
  """
  _check_positive("num_examples", num_examples)
  _check_positive("global_batch_size", global_batch_size)
  return max(1, int(round(num_examples / global_batch_size)))


def build_learning_rate_schedule(
    base_learning_rate: float, scaling: str, global_batch_size: int,
    warmup_steps: int,  # pylint: disable=redefined-outer-name
    total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
  """Linear warmup from 0 followed by a cosine decay to exactly 0.

  For step t (the optimizer's iteration count before the update):
  t < warmup: lr(t) = t / warmup * peak; otherwise
  lr(t) = peak * (1 + cos(pi * min(t - warmup, T) / T)) / 2 with
  T = total_steps - warmup_steps.

  Build it eagerly (outside `tf.function`): `LinearWarmup` evaluates the peak
  value once at construction time.

  Args:
    base_learning_rate: The configured (unscaled) learning rate.
    scaling: `linear` or `sqrt`, see `scaled_learning_rate`.
    global_batch_size: Images per view summed over all replicas.
    warmup_steps: Warmup length in steps (>= 0); 0 starts the cosine at step 0.
    total_steps: Run length in steps; must exceed `warmup_steps` so the cosine
      has a non-empty decay period.

  Returns:
    A tf_keras `LearningRateSchedule`.
  """
  peak = scaled_learning_rate(base_learning_rate, global_batch_size, scaling)
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
  if total_steps <= warmup_steps:
    raise ValueError(
        f"total_steps must be > warmup_steps ({warmup_steps}), "
        f"got {total_steps!r}")
  cosine = lr_schedule.CosineDecayWithOffset(
      offset=int(warmup_steps),
      initial_learning_rate=peak,
      decay_steps=int(total_steps - warmup_steps),
      alpha=0.0)
  if warmup_steps == 0:
    # LinearWarmup would compute 0/0 for its (unselected) warmup branch; skip
    # it rather than rely on tf.cond discarding the NaN.
    return cosine
  return lr_schedule.LinearWarmup(
      after_warmup_lr_sched=cosine,
      warmup_steps=int(warmup_steps),
      warmup_learning_rate=0.0)


def build_optimizer(
    name: str,
    learning_rate: LearningRate,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    eeta: float = 0.001,
    exclude_from_weight_decay: Sequence[str] = DEFAULT_EXCLUDE,
) -> keras.optimizers.legacy.Optimizer:
  """Builds the training optimizer (SPEC §4.1).

  Only LARS applies `weight_decay` itself (added to the gradient before the
  trust ratio); for `momentum` and `adam` the trainer adds the L2 term of
  `weight_decay_loss` to the loss instead, as the original code did.

  Args:
    name: `lars`, `momentum` (Nesterov SGD) or `adam`.
    learning_rate: A float or a `LearningRateSchedule`.
    momentum: Momentum coefficient for `lars` and `momentum`.
    weight_decay: Decoupled-into-gradient decay rate used by `lars` only.
    eeta: LARS trust coefficient.
    exclude_from_weight_decay: Regexes searched in variable names; matching
      variables get neither LARS decay nor layer adaptation.

  Returns:
    A tf_keras legacy optimizer.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"name must be one of {OPTIMIZERS}, got {name!r}")
  if not isinstance(learning_rate,
                    keras.optimizers.schedules.LearningRateSchedule):
    if learning_rate < 0:
      raise ValueError(f"learning_rate must be >= 0, got {learning_rate!r}")
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
  if eeta <= 0:
    raise ValueError(f"eeta must be > 0, got {eeta!r}")
  if isinstance(exclude_from_weight_decay, str):
    raise ValueError(
        "exclude_from_weight_decay must be a sequence of regexes, got the "
        f"string {exclude_from_weight_decay!r}")

  if name == OPTIMIZER_LARS:
    patterns = list(exclude_from_weight_decay)
    return lars.LARS(
        learning_rate=learning_rate,
        momentum=momentum,
        weight_decay_rate=weight_decay,
        eeta=eeta,
        nesterov=False,
        classic_momentum=True,
        # One list for both, as in the original: whatever skips decay also
        # skips the trust ratio (BN, biases, the supervised head).
        exclude_from_weight_decay=patterns,
        exclude_from_layer_adaptation=patterns)
  if name == OPTIMIZER_MOMENTUM:
    return keras.optimizers.legacy.SGD(
        learning_rate=learning_rate, momentum=momentum, nesterov=True)
  return keras.optimizers.legacy.Adam(learning_rate=learning_rate)


def excluded_from_weight_decay(
    variable: Union[tf.Variable, str],
    patterns: Sequence[str] = DEFAULT_EXCLUDE) -> bool:
  """Whether LARS skips decay and layer adaptation for `variable`.

  Args:
    variable: A variable or a variable name.
    patterns: Regexes searched in the name, as LARS does.

  Returns:
    True if any pattern is found in the variable's name.
  """
  name = variable if isinstance(variable, str) else variable.name
  return any(re.search(p, name) is not None for p in patterns)


def weight_decay_loss(trainable_variables: Iterable[tf.Variable],
                      optimizer_name: str, weight_decay: float) -> tf.Tensor:
  """The L2 term the trainer adds to the loss (SPEC §4.2, quirk Q8).

  With LARS the optimizer decays everything it does not exclude, so the loss
  only carries the supervised-head kernel (excluded from LARS). With the other
  optimizers the loss carries every trainable variable except batch norm,
  biases and unused projection layers included.

  Args:
    trainable_variables: The model's trainable variables.
    optimizer_name: `lars`, `momentum` or `adam`.
    weight_decay: Coefficient of sum(0.5 * ||W||^2).

  Returns:
    A float32 scalar tensor (0 when `weight_decay` is 0).
  """
  if optimizer_name not in OPTIMIZERS:
    raise ValueError(
        f"optimizer_name must be one of {OPTIMIZERS}, got {optimizer_name!r}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
  if weight_decay == 0:
    return tf.constant(0.0, tf.float32)
  if optimizer_name == OPTIMIZER_LARS:
    selected = [
        v for v in trainable_variables
        if _SUPERVISED_HEAD_NAME in v.name and _BIAS_NAME not in v.name
    ]
  else:
    selected = [v for v in trainable_variables if _BN_NAME not in v.name]
  if not selected:
    return tf.constant(0.0, tf.float32)
  l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in selected])
  return tf.cast(weight_decay, tf.float32) * l2


def _check_positive(arg_name: str, value) -> None:
  if value <= 0:
    raise ValueError(f"{arg_name} must be > 0, got {value!r}")
