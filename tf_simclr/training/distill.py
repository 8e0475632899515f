"""Distillation of a fine-tuned teacher into a student (SimCLRv2 stage 3).

On unlabelled images the student matches the teacher's tempered class
distribution:

  distill = mean_i  -sum_c softmax(t_i / tau)_c * log softmax(s_i / tau)_c
            (times tau^2 with `scale_by_temperature_squared`)

With `distill_label_weight` alpha > 0 the student also sees labelled batches:

  total = (1 - alpha) * distill + alpha * CE(labels, s_labelled) + decay

(alpha = 0: total = distill + decay, no labelled data needed). The teacher
sees exactly the augmented images the student sees, runs in inference mode
and is never trained: its logits pass through `tf.stop_gradient`, and only the
student's trainable variables are differentiated and updated.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf
import tf_keras as keras

from tf_simclr import losses
from tf_simclr.models import simclr_model
from tf_simclr.training import common
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision
from tf_simclr.training.pretrain import SUPERVISED_ACC
from tf_simclr.training.pretrain import SUPERVISED_LOSS
from tf_simclr.training.pretrain import TOTAL_LOSS
from tf_simclr.training.pretrain import WEIGHT_DECAY

DISTILL_LOSS = "distill_loss"
# Share of unlabelled images where the student's argmax equals the teacher's.
TEACHER_AGREEMENT = "teacher_agreement"

# Keys of the distributed batches the trainer reads.
UNLABELLED = "unlabelled"
LABELLED = "labelled"

_HALF_DTYPES = (tf.float16, tf.bfloat16)


def _check_temperature(temperature) -> None:
  static = tf.get_static_value(temperature)
  if static is None:
    return  # A traced tensor: the caller owns its validity.
  if not static > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _class_count(logits: tf.Tensor) -> Optional[int]:
  return tf.compat.dimension_value(logits.shape[-1])


def check_class_counts(teacher_classes: Optional[int],
                       student_classes: Optional[int]) -> None:
  """Raises unless both class counts are equal (unknown counts pass)."""
  if (teacher_classes is not None and student_classes is not None and
      teacher_classes != student_classes):
    raise ValueError(
        f"the teacher predicts {teacher_classes} classes but the student "
        f"(and dataset) has {student_classes}; distillation needs the same "
        "classes on both sides")


def distillation_loss(teacher_logits: tf.Tensor,
                      student_logits: tf.Tensor,
                      temperature: float,
                      scale_by_temperature_squared: bool = False
                      ) -> tf.Tensor:
  """Cross-entropy from the tempered teacher to the tempered student.

  mean_i -sum_c softmax(t_i / tau)_c * log softmax(s_i / tau)_c, optionally
  multiplied by tau^2 (which keeps gradient magnitudes comparable across
  temperatures). No gradient flows into `teacher_logits`.

  Args:
    teacher_logits: [n, classes].
    student_logits: [n, classes].
    temperature: tau > 0.
    scale_by_temperature_squared: multiply the loss by tau^2.

  Returns:
    A float32 scalar (half-precision inputs are upcast).

  Raises:
    ValueError: on a non-positive temperature or mismatched shapes (the
      message names both class counts when they differ).
  """
  _check_temperature(temperature)
  teacher_logits = tf.convert_to_tensor(teacher_logits)
  student_logits = tf.convert_to_tensor(student_logits)
  if teacher_logits.shape.rank != 2 or student_logits.shape.rank != 2:
    raise ValueError(
        "teacher_logits and student_logits must be [n, classes], got shapes "
        f"{teacher_logits.shape} and {student_logits.shape}")
  check_class_counts(_class_count(teacher_logits),
                     _class_count(student_logits))
  if not teacher_logits.shape[:1].is_compatible_with(student_logits.shape[:1]):
    raise ValueError(
        "teacher_logits and student_logits must have the same batch size, got "
        f"shapes {teacher_logits.shape} and {student_logits.shape}")
  dtype = tf.float32
  teacher = tf.stop_gradient(tf.cast(teacher_logits, dtype))
  student = tf.cast(student_logits, dtype)
  tau = tf.cast(temperature, dtype)
  targets = tf.nn.softmax(teacher / tau, axis=-1)
  per_example = tf.nn.softmax_cross_entropy_with_logits(
      labels=targets, logits=student / tau)
  loss = tf.reduce_mean(per_example)
  if scale_by_temperature_squared:
    loss *= tau * tau
  return loss


def mix_losses(distill: tf.Tensor, labelled: Optional[tf.Tensor],
               distill_label_weight: float) -> tf.Tensor:
  """(1 - alpha) * distill + alpha * labelled, or distill alone for alpha=0.

  Args:
    distill: the distillation loss.
    labelled: the supervised loss on labelled images (ignored when alpha=0).
    distill_label_weight: alpha in [0, 1].
  """
  if not 0.0 <= distill_label_weight <= 1.0:
    raise ValueError("distill_label_weight must be in [0, 1], got "
                     f"{distill_label_weight!r}")
  if distill_label_weight == 0:
    return distill
  if labelled is None:
    raise ValueError("labelled must be given when distill_label_weight > 0, "
                     f"got distill_label_weight={distill_label_weight!r}")
  alpha = tf.cast(distill_label_weight, distill.dtype)
  return (1.0 - alpha) * distill + alpha * labelled


def _static_class_count(model) -> Optional[int]:
  head = getattr(model, "supervised_head", None)
  return getattr(head, "num_classes", None)


class DistillTrainer(common.StepTrainer):
  """One distillation step per replica (see the module docstring).

  Args:
    strategy: the distribution strategy the models and optimizer live in.
    teacher: a built `SimCLRModel` with a supervised head (see
      `models.loading.load_teacher`), or any callable
      `teacher(images, training=False)` returning a dict with `LOGITS_SUP`.
      Called in inference mode and never updated; its architecture may differ
      from the student's.
    student: a built `SimCLRModel` with a supervised head
      (`build_model(..., 'distill')`), trained.
    optimizer: a tf_keras legacy optimizer whose `iterations` is the step.
    train_dataset: a distributed dataset of {"image": float32 [b, S, S, 3],
      "label": int32 [b]} batches of unlabelled images (labels are ignored)
      when `distill_label_weight` is 0; otherwise a dict
      {UNLABELLED: that dataset, LABELLED: a distributed dataset of the same
      structure with labelled images (e.g. over `labelled_subset_source`)}.
    num_classes: classes of the dataset; the student's and (when it can be
      known before tracing) the teacher's class counts must equal it.
    optimizer_name: 'lars', 'momentum' or 'adam' (weight-decay semantics).
    weight_decay: the decay rate, applied to the student only.
    temperature: distillation temperature tau > 0.
    scale_by_temperature_squared: multiply the distillation loss by tau^2.
    distill_label_weight: alpha in [0, 1], the weight of the supervised loss
      on labelled batches (the distillation loss gets 1 - alpha).
    jit_compile: XLA-compile the per-replica forward and backward pass (one
      replica only).
  """

  def __init__(self,
               strategy: tf.distribute.Strategy,
               teacher: Callable,
               student: keras.Model,
               optimizer: keras.optimizers.legacy.Optimizer,
               train_dataset,
               num_classes: int,
               optimizer_name: str,
               weight_decay: float,
               temperature: float = 1.0,
               scale_by_temperature_squared: bool = False,
               distill_label_weight: float = 0.0,
               jit_compile: bool = False):
    if not callable(teacher):
      raise ValueError(f"teacher must be callable, got {teacher!r}")
    if getattr(student, "supervised_head", None) is None:
      raise ValueError(
          "student must be a SimCLRModel with a supervised head, got "
          f"{student!r}")
    if teacher is student:
      raise ValueError("teacher and student must be different models")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
        num_classes < 1):
      raise ValueError(
          f"num_classes must be a positive integer, got {num_classes!r}")
    if student.supervised_head.num_classes != num_classes:
      raise ValueError(
          f"the student predicts {student.supervised_head.num_classes} "
          f"classes but num_classes (the dataset) is {num_classes}")
    check_class_counts(_static_class_count(teacher), num_classes)
    _check_temperature(temperature)
    if not 0.0 <= distill_label_weight <= 1.0:
      raise ValueError("distill_label_weight must be in [0, 1], got "
                       f"{distill_label_weight!r}")
    uses_labels = distill_label_weight > 0
    if uses_labels != (isinstance(train_dataset, dict)):
      raise ValueError(
          "train_dataset must be a dict {'unlabelled': ..., 'labelled': ...} "
          "exactly when distill_label_weight > 0, got distill_label_weight="
          f"{distill_label_weight!r} and a "
          f"{type(train_dataset).__name__}")
    if uses_labels and set(train_dataset) != {UNLABELLED, LABELLED}:
      raise ValueError(
          f"train_dataset must have the keys {[UNLABELLED, LABELLED]}, got "
          f"{sorted(train_dataset)}")
    self.teacher = teacher
    self.num_classes = num_classes
    self.temperature = temperature
    self.scale_by_temperature_squared = scale_by_temperature_squared
    self.distill_label_weight = distill_label_weight
    super().__init__(strategy, student, optimizer, train_dataset,
                     optimizer_name, weight_decay, jit_compile)

  def metric_names(self):
    names = (TOTAL_LOSS, DISTILL_LOSS, TEACHER_AGREEMENT, WEIGHT_DECAY,
             common.GRADIENT_NORM)
    if self.distill_label_weight > 0:
      names += (SUPERVISED_LOSS, SUPERVISED_ACC)
    return names

  @property
  def student(self) -> keras.Model:
    return self.model

  def compute_loss(self, unlabelled_images: tf.Tensor,
                   labelled_images: Optional[tf.Tensor] = None,
                   labels: Optional[tf.Tensor] = None
                   ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The unscaled per-replica loss and its parts (student in training mode).

    Args:
      unlabelled_images: [n, S, S, 3] images for the distillation term.
      labelled_images: [m, S, S, 3] labelled images (alpha > 0 only).
      labels: [m] int32 labels of `labelled_images`.

    Returns:
      (total loss, {metric name: scalar}).
    """
    teacher_logits = tf.stop_gradient(
        self.teacher(unlabelled_images, training=False)[
            simclr_model.LOGITS_SUP])
    uses_labels = self.distill_label_weight > 0
    images = (tf.concat([unlabelled_images, labelled_images], 0)
              if uses_labels else unlabelled_images)
    # One student pass over both batches: batch norm sees them together.
    student_logits = self.student(images, training=True)[
        simclr_model.LOGITS_SUP]
    num_unlabelled = tf.shape(unlabelled_images)[0]
    unlabelled_logits = student_logits[:num_unlabelled]
    check_class_counts(_class_count(teacher_logits),
                       _class_count(unlabelled_logits))
    distill = distillation_loss(teacher_logits, unlabelled_logits,
                                self.temperature,
                                self.scale_by_temperature_squared)
    stats = {
        DISTILL_LOSS: distill,
        TEACHER_AGREEMENT: tf.reduce_mean(tf.cast(tf.equal(
            tf.argmax(unlabelled_logits, -1), tf.argmax(teacher_logits, -1)),
                                                  tf.float32)),
    }
    labelled = None
    if uses_labels:
      labelled_logits = student_logits[num_unlabelled:]
      labelled = losses.supervised_loss(labels, labelled_logits)
      stats[SUPERVISED_LOSS] = labelled
      stats[SUPERVISED_ACC] = losses.top_k_accuracy(labels, labelled_logits, 1)
    decay = optimizer_lib.weight_decay_loss(self.student.trainable_variables,
                                            self.optimizer_name,
                                            self.weight_decay)
    total = mix_losses(distill, labelled, self.distill_label_weight) + decay
    stats[WEIGHT_DECAY] = decay
    stats[TOTAL_LOSS] = total
    return total, stats

  def _loss_and_gradients(self, batch):
    variables = self.student.trainable_variables
    with tf.GradientTape() as tape:
      if self.distill_label_weight > 0:
        total, stats = self.compute_loss(batch[UNLABELLED]["image"],
                                         batch[LABELLED]["image"],
                                         batch[LABELLED]["label"])
      else:
        total, stats = self.compute_loss(batch["image"])
      # Gradients are summed over replicas, so scale for a mean.
      scaled = precision.scale_loss(
          self.optimizer, total / self.strategy.num_replicas_in_sync)
    return precision.unscale_gradients(
        self.optimizer, tape.gradient(scaled, variables)), stats

  def replica_step(self, batch) -> dict[str, tf.Tensor]:
    """One replica's whole step (what `strategy.run` runs); returns its stats."""
    gradients, stats = self._forward_backward(batch)
    return self._apply(gradients, stats)

  def train_step(self, iterator):
    self.strategy.run(self.replica_step,
                      args=(tf.nest.map_structure(next, iterator),))

