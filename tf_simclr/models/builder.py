"""Builds a `SimCLRModel` from configuration dataclasses."""

from __future__ import annotations

from tf_simclr import configs
from tf_simclr.models import heads
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model

TRAIN_MODE_PRETRAIN = "pretrain"
TRAIN_MODE_FINETUNE = "finetune"
TRAIN_MODE_SUPERVISED = "supervised"
TRAIN_MODE_DISTILL = "distill"
TRAIN_MODES = (TRAIN_MODE_PRETRAIN, TRAIN_MODE_FINETUNE,
               TRAIN_MODE_SUPERVISED, TRAIN_MODE_DISTILL)


def build_backbone(model_config: configs.ModelConfig,
                   frozen_through_block: int = -1) -> resnet.ResNet:
  """Builds the ResNet described by `model_config`.

  Args:
    model_config: backbone architecture.
    frozen_through_block: see `resnet.ResNet`.

  Returns:
    An unbuilt `resnet.ResNet`.
  """
  return resnet.ResNet(
      depth=model_config.resnet_depth,
      width_multiplier=model_config.width_multiplier,
      sk_ratio=model_config.sk_ratio,
      se_ratio=model_config.se_ratio,
      stem=model_config.stem,
      shortcut=model_config.shortcut,
      global_bn=model_config.global_bn,
      batch_norm_decay=model_config.batch_norm_decay,
      batch_norm_epsilon=model_config.batch_norm_epsilon,
      fused_batch_norm=model_config.fused_batch_norm,
      recompute_block_groups=model_config.recompute_block_groups,
      frozen_through_block=frozen_through_block)


def build_model(model_config: configs.ModelConfig,
                head_config: configs.HeadConfig,
                train_mode: str,
                frozen_through_block: int = -1) -> simclr_model.SimCLRModel:
  """Builds the model for a training stage.

  'pretrain' gets a stop-gradient linear-eval head only when
  `head_config.lineareval_while_pretraining`; 'finetune', 'supervised' and
  'distill' always get a trainable supervised head.

  Args:
    model_config: backbone architecture.
    head_config: projection and supervised heads.
    train_mode: one of `TRAIN_MODES`.
    frozen_through_block: the reference's `fine_tune_after_block`; only
      allowed outside pretraining (see `resnet.ResNet`).

  Returns:
    An unbuilt `simclr_model.SimCLRModel`.
  """
  if train_mode not in TRAIN_MODES:
    raise ValueError(
        f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
  if train_mode == TRAIN_MODE_PRETRAIN and frozen_through_block != -1:
    raise ValueError(
        "frozen_through_block must be -1 when train_mode is 'pretrain', got "
        f"{frozen_through_block!r}")
  backbone = build_backbone(model_config, frozen_through_block)
  projection_head = heads.ProjectionHead(
      mode=head_config.proj_head_mode,
      num_layers=head_config.num_proj_layers,
      out_dim=head_config.proj_out_dim,
      ft_proj_selector=head_config.ft_proj_selector,
      global_bn=model_config.global_bn,
      batch_norm_decay=model_config.batch_norm_decay,
      batch_norm_epsilon=model_config.batch_norm_epsilon)
  if train_mode == TRAIN_MODE_PRETRAIN:
    with_head = head_config.lineareval_while_pretraining
    linear_eval = with_head
  else:
    with_head = True
    linear_eval = False
  supervised_head = (
      heads.SupervisedHead(head_config.num_classes,
                           zero_init=head_config.zero_init_logits_layer)
      if with_head else None)
  return simclr_model.SimCLRModel(backbone, projection_head, supervised_head,
                                  linear_eval=linear_eval)
