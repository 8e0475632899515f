"""Task-agnostic contrastive pretraining step (SimCLR, SPEC §2.4, §3)."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tf_simclr import losses
from tf_simclr.data import augment
from tf_simclr.models import simclr_model
from tf_simclr.training import common
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision

TOTAL_LOSS = "total_loss"
CONTRAST_LOSS = "contrast_loss"
CONTRAST_ACC = "contrast_acc"
CONTRAST_ENTROPY = "contrast_entropy"
SUPERVISED_LOSS = "supervised_loss"
SUPERVISED_ACC = "supervised_acc"
WEIGHT_DECAY = "weight_decay_loss"
LEARNING_RATE = common.LEARNING_RATE


class PretrainTrainer(common.StepTrainer):
  """One SimCLR step per replica: two views, NT-Xent, optional linear eval.

  Args:
    *args, **kwargs: `common.StepTrainer`'s (strategy, model, optimizer,
      train_dataset, optimizer_name, weight_decay, jit_compile); the model is
      a `SimCLRModel` (a supervised head means linear eval), the dataset
      distributes {"view1", "view2", "label"} batches.
    temperature: NT-Xent temperature.
    hidden_norm: L2-normalise projections before the loss.
    blur_image_size: configured image size for the blur kernel, or None for
      no blur.
    seed: seed for the in-step random blur.
    momentum_encoder: with `negative_queue`, turns on the memory of negatives:
      a `memory_bank.MomentumEncoder` producing keys from view 1.
    negative_queue: a `memory_bank.NegativeQueue` of past keys.
    memory_momentum: EMA momentum of the momentum encoder.
  """

  def __init__(self,
               *args,
               temperature: float,
               hidden_norm: bool = True,
               blur_image_size: Optional[int] = None,
               seed: int = 0,
               momentum_encoder=None,
               negative_queue=None,
               memory_momentum: float = 0.999,
               **kwargs):
    if (momentum_encoder is None) != (negative_queue is None):
      raise ValueError(
          "momentum_encoder and negative_queue go together, got "
          f"{type(momentum_encoder).__name__} and "
          f"{type(negative_queue).__name__}")
    self.temperature = temperature
    self.hidden_norm = hidden_norm
    self.blur_image_size = blur_image_size
    self.seed = seed
    self.momentum_encoder = momentum_encoder
    self.negative_queue = negative_queue
    self.memory_momentum = memory_momentum
    super().__init__(*args, **kwargs)

  def metric_names(self):
    return (TOTAL_LOSS, CONTRAST_LOSS, CONTRAST_ACC, CONTRAST_ENTROPY,
            SUPERVISED_LOSS, SUPERVISED_ACC, WEIGHT_DECAY,
            common.GRADIENT_NORM)

  def always_reported(self):
    # The supervised metrics only exist with a linear-eval head.
    return (TOTAL_LOSS, CONTRAST_LOSS, CONTRAST_ACC, CONTRAST_ENTROPY,
            WEIGHT_DECAY, common.GRADIENT_NORM)

  def _blur_views(self, view1: tf.Tensor, view2: tf.Tensor):
    """Random blur per view batch; the seed depends on step and replica."""
    context = tf.distribute.get_replica_context()
    replica = tf.cast(context.replica_id_in_sync_group if context else 0,
                      tf.int64)
    step = tf.cast(self.optimizer.iterations, tf.int64)
    base = step * 2 * self.strategy.num_replicas_in_sync + 2 * replica
    seeds = [tf.stack([tf.constant(self.seed, tf.int64) + 7919, base + i])
             for i in range(2)]
    return (augment.random_gaussian_blur_batch(
        view1, seeds[0], self.blur_image_size),
            augment.random_gaussian_blur_batch(
                view2, seeds[1], self.blur_image_size))

  def _loss_and_gradients(self, images, labels, extra_negatives=None):
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      outputs = self.model(images, training=True)
      contrast = losses.nt_xent_loss(
          outputs[simclr_model.PROJ_HEAD_OUTPUT],
          temperature=self.temperature, hidden_norm=self.hidden_norm,
          extra_negatives=extra_negatives)
      total = contrast[losses.LOSS]
      stats = {
          CONTRAST_LOSS: contrast[losses.LOSS],
          CONTRAST_ACC: contrast[losses.CONTRAST_ACCURACY],
          CONTRAST_ENTROPY: contrast[losses.CONTRAST_ENTROPY],
      }
      if simclr_model.LOGITS_SUP in outputs:
        logits = outputs[simclr_model.LOGITS_SUP]
        both_views_labels = tf.concat([labels, labels], 0)
        supervised = losses.supervised_loss(both_views_labels, logits)
        total += supervised
        stats[SUPERVISED_LOSS] = supervised
        stats[SUPERVISED_ACC] = losses.top_k_accuracy(both_views_labels,
                                                      logits, 1)
      decay = optimizer_lib.weight_decay_loss(variables, self.optimizer_name,
                                              self.weight_decay)
      total += decay
      stats[WEIGHT_DECAY] = decay
      stats[TOTAL_LOSS] = total
      # Gradients are summed over replicas, so scale for a mean.
      scaled = precision.scale_loss(
          self.optimizer, total / self.strategy.num_replicas_in_sync)
    gradients = precision.unscale_gradients(
        self.optimizer, tape.gradient(scaled, variables))
    return gradients, stats

  def replica_step(self, batch) -> dict[str, tf.Tensor]:
    """One replica's whole step (what `strategy.run` runs); returns its stats."""
    view1, view2 = batch["view1"], batch["view2"]
    if self.blur_image_size:
      view1, view2 = self._blur_views(view1, view2)
    images = tf.concat([view1, view2], 0)
    if self.negative_queue is not None:
      # Keys and negatives are read before this step changes either.
      keys = self.momentum_encoder.compute_keys(view1)
      gradients, stats = self._forward_backward(
          images, batch["label"], self.negative_queue.negatives())
    else:
      gradients, stats = self._forward_backward(images, batch["label"])
    self._apply(gradients, stats)
    if self.negative_queue is not None:
      self.negative_queue.enqueue(keys)
      self.momentum_encoder.update(self.model, self.memory_momentum)
    return stats
