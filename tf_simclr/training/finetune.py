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

import tensorflow as tf

from tf_simclr import losses
from tf_simclr.models import simclr_model
from tf_simclr.training import common
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision
from tf_simclr.training.pretrain import SUPERVISED_ACC
from tf_simclr.training.pretrain import SUPERVISED_LOSS
from tf_simclr.training.pretrain import TOTAL_LOSS
from tf_simclr.training.pretrain import WEIGHT_DECAY


class FinetuneTrainer(common.StepTrainer):
  """One supervised step per replica on {"image", "label"} batches.

  The loss is the softmax cross-entropy of the supervised head plus the
  optimizer-dependent weight-decay term (SPEC §3.3, §4.2). Frozen backbone
  parts (`frozen_through_block`) hold no trainable variables, so they get no
  gradient and no decay, and their batch norms run in inference mode.

  Args:
    strategy, model, optimizer, train_dataset, optimizer_name, weight_decay,
    jit_compile: see `common.StepTrainer`. The model is a built `SimCLRModel`
      with a supervised head (from `build_model(model_config, head_config,
      'finetune' or 'supervised', frozen_through_block=...)`); the dataset
      distributes {"image": float32 [b, S, S, 3], "label": int32 [b]}
      per-replica batches (`build_finetune_dataset`, possibly over a
      `labelled_subset_source`).
  """

  def __init__(self, strategy, model, *args, **kwargs):
    if getattr(model, "supervised_head", None) is None:
      raise ValueError(
          f"model must be a SimCLRModel with a supervised head, got {model!r}")
    super().__init__(strategy, model, *args, **kwargs)

  def metric_names(self):
    return (TOTAL_LOSS, SUPERVISED_LOSS, SUPERVISED_ACC, WEIGHT_DECAY,
            common.GRADIENT_NORM)

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

  def replica_step(self, batch) -> dict[str, tf.Tensor]:
    """One replica's whole step (what `strategy.run` runs); returns its stats."""
    gradients, stats = self._forward_backward(batch["image"], batch["label"])
    return self._apply(gradients, stats)
