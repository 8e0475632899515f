"""Named sets of defaults: every stage's values for one kind of run.

  cfg = presets.get("cifar10_simclr").config("finetune", checkpoint="/runs/p")

A preset starts from the config dataclasses' defaults (which are `digits_cpu`
pretraining), sets its own values for every stage (`common`), then each
stage's own (`stages`); `Preset.config` adds the caller's overrides, keyed by
flag name, and records the preset's name and the overrides in the config (and
so in config.json). `--preset=NAME` on the command line does the same, with
every flag given explicitly as an override.
"""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Mapping, Optional

from tf_simclr import configs

DEFAULT = configs.DEFAULT_PRESET

# Explicit lengths fix a run: its stage's minimum length then stays 0.
_LENGTH_KEYS = ("train_epochs", "train_steps")


# The original code's augmentation (crops down to 8 % of the image, flips).
_ORIGINAL_AUGMENTATION = {"min_crop_area": 0.08, "finetune_min_crop_area": 0.08,
                          "horizontal_flip": True}
# digits_cpu's k-NN and probes after pretraining, off for the large recipes.
_NO_MONITORS = {"knn_eval": False, "probe_label_fractions": ()}


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
  return types.MappingProxyType(dict(values))


@dataclasses.dataclass(frozen=True)
class Preset:
  """One named recipe: values shared by the stages and each stage's own.

  Values are keyed by flag name (`configs.flag_fields`); a stage's values win
  over the common ones, and overrides over both.
  """
  name: str
  description: str
  common: Mapping[str, Any]
  stages: Mapping[str, Mapping[str, Any]]

  def __post_init__(self):
    object.__setattr__(self, "common", _frozen(self.common))
    object.__setattr__(self, "stages", _frozen(
        {k: _frozen(v) for k, v in self.stages.items()}))
    fields = configs.flag_fields()
    for stage, values in (("common", self.common), *self.stages.items()):
      if stage != "common" and stage not in configs.TRAIN_MODES:
        raise ValueError(f"preset {self.name!r}: unknown stage {stage!r}; "
                         f"known: {configs.TRAIN_MODES}")
      unknown = set(values) - set(fields)
      if unknown:
        raise ValueError(f"preset {self.name!r}, {stage}: unknown values "
                         f"{sorted(unknown)}")

  @property
  def dataset(self) -> str:
    return self.values()["dataset"]

  def values(self, train_mode: str = "pretrain") -> dict[str, Any]:
    """Every flag-named value of `train_mode` (stem/shortcut may be AUTO)."""
    if train_mode not in configs.TRAIN_MODES:
      raise ValueError(f"train_mode must be one of {configs.TRAIN_MODES}, "
                       f"got {train_mode!r}")
    defaults = {name: f.default for name, f in configs.flag_fields().items()}
    # The dataclasses hold the default stem and shortcut resolved for their
    # 16 px; a preset follows its image size and SK ratio instead.
    defaults.update(stem=configs.AUTO, shortcut=configs.AUTO)
    return {**defaults, **self.common, **self.stages.get(train_mode, {}),
            "train_mode": train_mode}

  def config(self, train_mode: str = "pretrain",
             **overrides: Any) -> configs.ExperimentConfig:
    """The preset's `train_mode` config with `overrides` (by flag name).

    Raises:
      ValueError: on an unknown name or an invalid value, naming it.
    """
    if "train_mode" in overrides:
      raise ValueError("train_mode is config()'s first argument, not an "
                       f"override (got train_mode={overrides['train_mode']!r})")
    known = configs.flag_fields()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
      raise ValueError(f"unknown override(s) {unknown}; known: {sorted(known)}")
    # Paths may come as path objects; config.json stores strings.
    overrides = {k: (tuple(v) if isinstance(v, list) else
                     os.fspath(v) if isinstance(v, os.PathLike) else v)
                 for k, v in overrides.items()}
    values = self.values(train_mode)
    if (any(k in overrides for k in _LENGTH_KEYS) and
        "min_train_steps" not in overrides):
      values["min_train_steps"] = 0
    values.update(overrides)
    return configs.ExperimentConfig.from_flat(values, preset=self.name,
                                              overrides=overrides)


def _digits_cpu() -> Preset:
  # The paper's fine-tuning recipe (no warm-up, no weight decay, sqrt-scaled
  # learning rate, fine-tuning from the first projection layer), scaled down
  # to small labelled sets by two values: the batch is derived from the
  # training set (0; `optimizer.small_set_batch_size`: the largest power of
  # two not above half the set, 16 to 256), so the sqrt-scaled learning rate
  # follows it, and an epoch-derived run is at least `min_train_steps` long
  # (0 when a length is given explicitly). Fine-tuning at 10 % / 1 % of the
  # labels from the 60-epoch encoder with 150 instead of 300 steps gave
  # 0.897 / 0.571 (against 0.905 / 0.577); base rate 0.02 instead of 0.05
  # gave 0.889 at 10 %.
  supervised = {"warmup_epochs": 0.0, "weight_decay": 0.0,
                "learning_rate_scaling": "sqrt", "learning_rate": 0.05,
                "train_epochs": 30.0, "train_batch_size": 0,
                "min_train_steps": 300,
                # k-NN and the probes measure pretraining only.
                "knn_eval": False, "probe_label_fractions": ()}
  return Preset(
      name="digits_cpu",
      description=(
          "ResNet-18 at width 0.25 on the embedded 8x8 digits at 16 px: every "
          "stage finishes in minutes on a 2-core CPU. These are the config "
          "dataclasses' defaults."),
      # Pretraining is the dataclasses' defaults (configs.py says why).
      common={},
      # The pretraining run's linear-eval head saw every label: a fine-tune
      # on a subset starts its classifier from zero instead.
      stages={"finetune": {**supervised, "ft_proj_selector": 1,
                           "zero_init_logits_layer": True},
              "supervised": supervised,
              "distill": supervised})


def _cifar10_simclr() -> Preset:
  # The original SimCLR README's CIFAR-10 commands. Pretraining: ResNet-18,
  # batch 512, 1000 epochs, LARS at 1.0 (linear scaling), weight decay 1e-4,
  # temperature 0.5, no blur, colour strength 0.5. The crop and flip values
  # are the original augmentation's.
  common = {
      "dataset": "cifar10", "image_size": 32, "eval_split": "test",
      "resnet_depth": 18, "width_multiplier": 1.0,
      **_ORIGINAL_AUGMENTATION, **_NO_MONITORS,
      "use_blur": False, "color_jitter_strength": 0.5, "temperature": 0.5,
      "optimizer": "lars", "learning_rate": 1.0,
      "learning_rate_scaling": "linear", "warmup_epochs": 10.0,
      "weight_decay": 1e-4, "train_batch_size": 512, "train_epochs": 1000.0,
  }
  # Its linear-evaluation command: a zero-initialised head on the frozen
  # encoder (all four block groups), momentum SGD at 0.1, no weight decay,
  # no warm-up, 100 epochs at batch 512, BN statistics not synchronised.
  linear_eval = {
      "fine_tune_after_block": 4, "zero_init_logits_layer": True,
      "global_bn": False, "optimizer": "momentum", "learning_rate": 0.1,
      "learning_rate_scaling": "linear", "weight_decay": 0.0,
      "warmup_epochs": 0.0, "train_epochs": 100.0, "train_batch_size": 512,
  }
  # The README gives no supervised or distillation command: both train the
  # whole network with the linear-evaluation optimiser and length.
  whole_network = {k: v for k, v in linear_eval.items()
                   if k not in ("fine_tune_after_block",
                                "zero_init_logits_layer")}
  return Preset(
      name="cifar10_simclr",
      description=(
          "The original SimCLR README's CIFAR-10 recipe: ResNet-18 1x, 32 px, "
          "batch 512, LARS 1.0, temperature 0.5, 1000 epochs; fine-tuning is "
          "its linear evaluation."),
      common=common,
      stages={"finetune": linear_eval, "supervised": whole_network,
              "distill": whole_network})


def _imagenet_simclrv2() -> Preset:
  # SimCLRv2 pretraining: ResNet-50 1x with selective kernels (which also
  # selects the ResNet-D stem and shortcut), a 3-layer projection head,
  # batch 4096 with synchronised BN, LARS at 0.075 * sqrt(batch), weight
  # decay 1e-4, temperature 0.1, blur and colour strength 1.0, 800 epochs.
  # The MoCo-style memory the paper adds is left off (memory_size=65536
  # turns it on).
  common = {
      "dataset": "imagenet2012", "image_size": 224, "eval_split": "validation",
      "resnet_depth": 50, "width_multiplier": 1.0, "sk_ratio": 0.0625,
      "num_proj_layers": 3, "global_bn": True,
      **_ORIGINAL_AUGMENTATION, **_NO_MONITORS,
      "use_blur": True, "color_jitter_strength": 1.0, "temperature": 0.1,
      "optimizer": "lars", "learning_rate": 0.075,
      "learning_rate_scaling": "sqrt", "warmup_epochs": 10.0,
      "weight_decay": 1e-4, "train_batch_size": 4096, "train_epochs": 800.0,
  }
  # The paper's fine-tuning on 1 % of the labels (the TFDS subset holding the
  # paper's 1 % list): from the first projection layer, LARS at
  # 0.005 * sqrt(1024) = 0.16, batch 1024, no warm-up, no weight decay,
  # 60 epochs. For 10 %: dataset=imagenet2012_subset/10pct, train_epochs=30.
  finetune = {
      "dataset": "imagenet2012_subset/1pct", "ft_proj_selector": 1,
      "learning_rate": 0.005, "learning_rate_scaling": "sqrt",
      "train_batch_size": 1024, "warmup_epochs": 0.0, "weight_decay": 0.0,
      "train_epochs": 60.0,
  }
  # Distillation on the unlabelled training set with the teacher's labels
  # only (label weight 0) at temperature 1, with the pretraining's batch,
  # learning rate and weight decay, 400 epochs.
  distill = {"distill_temperature": 1.0, "distill_label_weight": 0.0,
             "train_epochs": 400.0}
  return Preset(
      name="imagenet_simclrv2",
      description=(
          "SimCLRv2 on ImageNet (TFDS imagenet2012): ResNet-50 1x SK, 224 px, "
          "batch 4096, LARS 0.075 sqrt-scaled, temperature 0.1, 800 epochs; "
          "fine-tuning on 1 % of the labels and distillation as in the "
          "paper."),
      common=common,
      # Supervised training: the pretraining optimiser for 90 epochs.
      stages={"finetune": finetune, "distill": distill,
              "supervised": {"train_epochs": 90.0}})


_PRESETS = {p.name: p for p in (_digits_cpu(), _cifar10_simclr(),
                                _imagenet_simclrv2())}
assert DEFAULT in _PRESETS


def names() -> tuple[str, ...]:
  return tuple(_PRESETS)


def get(name: str) -> Preset:
  """The preset called `name`; ValueError naming it and the known ones."""
  try:
    return _PRESETS[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown preset {name!r}; known: {names()}") from None


def dataset_note(cfg: configs.ExperimentConfig) -> Optional[str]:
  """A line saying which preset applies when the dataset is not its own."""
  preset = _PRESETS.get(cfg.preset)
  if preset is None or cfg.data.dataset == preset.values(
      cfg.train.train_mode)["dataset"]:
    return None
  return (f"note: preset {preset.name} (made for --dataset="
          f"{preset.values(cfg.train.train_mode)['dataset']}) applies to "
          f"--dataset={cfg.data.dataset}; its values are kept where no flag "
          f"is given (--preset={'|'.join(names())})")
