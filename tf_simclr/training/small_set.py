"""Fine-tuning choices derived from the size of the labelled set.

(How many examples a label fraction keeps is `data.subsets.class_quotas`.)

One rule, measured on the embedded digits (R18 x0.25 pretrained for 60
epochs, seeds 0/1/2):

* `small_set_finetune`: with fewer than `FROZEN_BELOW_LABELS_PER_CLASS`
  labelled examples per class, fine-tuning trains a linear classifier on the
  frozen encoder output, with weight decay on its kernel (the linear probe's
  L2 regularisation, trained on augmented views): every extra trainable
  layer, the first projection layer included, fits one or two images per
  class exactly within a few steps and generalises worse than the frozen
  features. Above the threshold the paper's recipe applies unchanged (whole
  network, from the first projection layer): ImageNet's 1 % subset holds
  about 13 images per class. Digits, median top-1: 14 labels, frozen linear
  0.721 (raw pixels 0.607); 144 labels, whole network 0.930 against frozen
  linear 0.911.
"""

from __future__ import annotations

import dataclasses
from typing import Collection

import numpy as np

from tf_simclr import configs

# Below this many labelled examples per class the encoder stays frozen.
FROZEN_BELOW_LABELS_PER_CLASS = 5.0
# The block groups `fine_tune_after_block` freezes for a frozen encoder: the
# stem and all four groups.
FROZEN_ENCODER_BLOCK = 4
# `ft_proj_selector` of the frozen-encoder classifier: the encoder output.
ENCODER_OUTPUT = 0
# L2 on the classifier's kernel (with LARS the only term the loss carries);
# without it 300 steps on 14 digits drive the kernel towards the max-margin
# solution of a handful of images.
LINEAR_WEIGHT_DECAY = 1e-2
# Flags the rule fills in; one given explicitly keeps the user's value.
RULE_FLAGS = ("fine_tune_after_block", "ft_proj_selector", "weight_decay")


def _check_count(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 1):
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  return int(value)


def labels_per_class(num_labelled: int, num_classes: int) -> float:
  """Mean labelled examples per class."""
  return (_check_count("num_labelled", num_labelled) /
          _check_count("num_classes", num_classes))


def small_set_finetune(num_labelled: int, num_classes: int) -> dict:
  """Fine-tuning settings the labelled set's size calls for.

  Returns:
    {"fine_tune_after_block": 4, "ft_proj_selector": 0, "weight_decay":
    0.01} (a regularised linear classifier on the frozen encoder) below
    `FROZEN_BELOW_LABELS_PER_CLASS` labelled examples per class, else {} (the
    stage defaults stand).
  """
  if labels_per_class(num_labelled, num_classes) < FROZEN_BELOW_LABELS_PER_CLASS:
    return {"fine_tune_after_block": FROZEN_ENCODER_BLOCK,
            "ft_proj_selector": ENCODER_OUTPUT,
            "weight_decay": LINEAR_WEIGHT_DECAY}
  return {}


def resolve_small_set_finetune(cfg: configs.ExperimentConfig,
                               num_labelled: int,
                               explicit: Collection[str] = ()
                               ) -> configs.ExperimentConfig:
  """`cfg` with `small_set_finetune` applied to a fine-tuning run.

  Args:
    cfg: the experiment config, `head.num_classes` already filled in.
    num_labelled: examples of the labelled training set.
    explicit: flag names the user gave; those keep the user's value.

  Returns:
    `cfg` unchanged unless it fine-tunes and the set is small; then with
    `train.fine_tune_after_block`, `head.ft_proj_selector` and
    `optimizer.weight_decay` replaced (each unless named in `explicit`).
  """
  if cfg.train.train_mode != "finetune":
    return cfg
  settings = {k: v for k, v in small_set_finetune(
      num_labelled, cfg.head.num_classes).items() if k not in explicit}
  if not settings:
    return cfg
  # The config section holding each of RULE_FLAGS.
  sections = dict(zip(RULE_FLAGS, ("train", "head", "optimizer")))
  replaced = {}
  for name, value in settings.items():
    section = sections[name]
    current = replaced.get(section, getattr(cfg, section))
    replaced[section] = dataclasses.replace(current, **{name: value})
  return dataclasses.replace(cfg, **replaced)
