"""Fine-tuning and supervised training (SPEC §7).

`FinetuneTrainer` serves two stages with one step:

* `train_mode='finetune'`: the model comes from
  `build_model(..., 'finetune', frozen_through_block=fine_tune_after_block)`
  and is warm-started with `models.loading.warm_start` from a tf_simclr
  pretraining checkpoint or an original-code SavedModel.
* `train_mode='supervised'`: the same network trained from scratch.

Semi-supervised fine-tuning reads a `data.subsets.labelled_subset_source`.
"""

from __future__ import annotations

import orbit
import tensorflow as tf
import tf_keras as keras

from tf_simclr import losses
from tf_simclr.models import simclr_model
from tf_simclr.training import common
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision
from tf_simclr.training.pretrain import LEARNING_RATE
from tf_simclr.training.pretrain import SUPERVISED_ACC
from tf_simclr.training.pretrain import SUPERVISED_LOSS
from tf_simclr.training.pretrain import TOTAL_LOSS
from tf_simclr.training.pretrain import WEIGHT_DECAY


class FinetuneTrainer(orbit.StandardTrainer):
  """One supervised step per replica on {"image", "label"} batches.

  The loss is the softmax cross-entropy of the supervised head plus the
  optimizer-dependent weight-decay term (SPEC §3.3, §4.2). Frozen backbone
  parts (`frozen_through_block`) hold no trainable variables, so they get no
  gradient and no decay, and their batch norms run in inference mode.

  Args:
    strategy: the distribution strategy the model and optimizer live in.
    model: a built `SimCLRModel` with a supervised head (from
      `build_model(model_config, head_config, 'finetune' or 'supervised',
      frozen_through_block=...)`).
    optimizer: a tf_keras legacy optimizer whose `iterations` is the step.
    train_dataset: a distributed dataset of {"image": float32 [b, S, S, 3],
      "label": int32 [b]} per-replica batches (`build_finetune_dataset`,
      possibly over a `labelled_subset_source`).
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
    if getattr(model, "supervised_head", None) is None:
      raise ValueError(
          f"model must be a SimCLRModel with a supervised head, got {model!r}")
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
    self.metrics = common.make_mean_metrics(
        strategy, (TOTAL_LOSS, SUPERVISED_LOSS, SUPERVISED_ACC, WEIGHT_DECAY,
                   common.GRADIENT_NORM))
    self._forward_backward = common.maybe_xla(self._loss_and_gradients,
                                              jit_compile)
    super().__init__(
        train_dataset,
        options=orbit.StandardTrainerOptions(use_tf_while_loop=True))

  def _loss_and_gradients(self, images, labels):
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)[simclr_model.LOGITS_SUP]
      supervised = losses.supervised_loss(labels, logits)
      decay = optimizer_lib.weight_decay_loss(variables, self.optimizer_name,
                                              self.weight_decay)
      total = supervised + decay
      # Gradients are summed over replicas, so scale for a mean.
      scaled = precision.scale_loss(
          self.optimizer, total / self.strategy.num_replicas_in_sync)
    gradients = precision.unscale_gradients(
        self.optimizer, tape.gradient(scaled, variables))
    stats = {
        TOTAL_LOSS: total,
        SUPERVISED_LOSS: supervised,
        SUPERVISED_ACC: losses.top_k_accuracy(labels, logits, 1),
        WEIGHT_DECAY: decay,
    }
    return gradients, stats

  def train_loop_begin(self):
    common.reset_metrics(self.metrics)

  def replica_step(self, batch) -> dict[str, tf.Tensor]:
    """One replica's whole step (what `strategy.run` runs); returns its stats."""
    gradients, stats = self._forward_backward(batch["image"], batch["label"])
    stats[common.GRADIENT_NORM] = common.apply_gradients(
        self.optimizer, gradients, self.model.trainable_variables)
    common.update_metrics(self.metrics, stats)
    return stats

  def train_step(self, iterator):
    self.strategy.run(self.replica_step, args=(next(iterator),))

  def train_loop_end(self):
    results = common.metric_results(self.metrics, self.metrics)
    results[LEARNING_RATE] = common.learning_rate_value(self.optimizer)
    return results
