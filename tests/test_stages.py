"""The stage registry and what each registered stage builds."""

import dataclasses

import numpy as np
import pytest

import tf_simclr
from tf_simclr import configs
from tf_simclr.training import stages


def test_registry_names_the_four_stages_and_rejects_unknown_names():
  assert stages.names() == ("pretrain", "finetune", "supervised", "distill")
  assert isinstance(stages.get("distill"), stages.DistillStage)
  # A new instance each time: a stage caches what it loads for one run.
  assert stages.get("distill") is not stages.get("distill")
  with pytest.raises(ValueError) as raised:
    stages.get("finetuning")
  assert "'finetuning'" in str(raised.value)
  for name in stages.names():
    assert repr(name) in str(raised.value)


def test_register_rejects_a_taken_name_and_non_stages():
  with pytest.raises(ValueError, match="'pretrain' is already registered"):
    stages.register("pretrain")(type("Other", (stages.Stage,), {}))
  with pytest.raises(ValueError, match="needs a Stage subclass"):
    stages.register("not_a_stage")(object)
  assert "not_a_stage" not in stages.names()


def test_each_stage_builds_its_own_model():
  cfg = configs.ExperimentConfig(
      model=configs.ModelConfig(resnet_depth=18, width_multiplier=0.0625,
                                stem=configs.STEM_CIFAR),
      head=configs.HeadConfig(proj_out_dim=8,
                              lineareval_while_pretraining=False),
      data=configs.DataConfig(image_size=16),
      train=configs.TrainConfig(train_mode="finetune",
                                fine_tune_after_block=4))
  pretrained = stages.get("pretrain").build_model(cfg, replicas=1)
  assert pretrained.supervised_head is None
  finetuned = stages.get("finetune").build_model(cfg, replicas=1)
  supervised = stages.get("supervised").build_model(cfg, replicas=1)
  assert finetuned.supervised_head is not None
  assert supervised.supervised_head is not None
  # fine_tune_after_block=4 freezes the whole backbone when fine-tuning;
  # training from scratch ignores it.
  assert finetuned.backbone.trainable_variables == []
  assert len(supervised.backbone.trainable_variables) == 63
  with_memory = dataclasses.replace(
      cfg, loss=dataclasses.replace(cfg.loss, memory_size=16))
  extras = stages.get("pretrain").build_extras(with_memory, pretrained, 1)
  assert set(extras) == {stages.MOMENTUM_ENCODER, stages.NEGATIVE_QUEUE}
  # The momentum encoder starts as a copy of the model.
  encoder = extras[stages.MOMENTUM_ENCODER].model
  for a, b in zip(encoder.backbone.variables, pretrained.backbone.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert stages.get("finetune").build_extras(with_memory, finetuned, 1) == {}


def test_finetune_stage_fits_a_frozen_linear_classifier_to_a_tiny_labelled_set():
  cfg = tf_simclr.presets.get("digits_cpu").config("finetune", checkpoint="/x")
  cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head,
                                                          num_classes=10))
  stage = stages.get("finetune")
  # 1 % of the digits: 14 labels, 1.4 per class.
  small = stage.fit_to_data(cfg, 14)
  assert (small.train.fine_tune_after_block, small.head.ft_proj_selector,
          small.optimizer.weight_decay) == (4, 0, 0.01)
  # 10 %: 144 labels, the preset's whole-network fine-tune.
  assert stage.fit_to_data(cfg, 144) == cfg
  # A value given explicitly wins over the rule.
  explicit = tf_simclr.presets.get("digits_cpu").config(
      "finetune", checkpoint="/x", ft_proj_selector=1)
  explicit = dataclasses.replace(
      explicit, head=dataclasses.replace(explicit.head, num_classes=10))
  fitted = stage.fit_to_data(explicit, 14)
  assert (fitted.train.fine_tune_after_block, fitted.head.ft_proj_selector,
          fitted.optimizer.weight_decay) == (4, 1, 0.01)
  # Other stages leave the config as it is.
  supervised = dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, train_mode="supervised",
                                     checkpoint=None))
  assert stages.get("supervised").fit_to_data(supervised, 14) == supervised
