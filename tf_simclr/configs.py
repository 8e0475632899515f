"""Frozen configuration dataclasses, one per component.

`flags/` fills these from absl flags; library code receives them (or their
fields) explicitly and never reads flags itself. Every dataclass is frozen so a
resolved configuration can be written to `model_dir/config.json` and read back
unchanged (`ExperimentConfig.to_dict` / `ExperimentConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

STEM_CIFAR = "cifar"
STEM_IMAGENET = "imagenet"
STEM_RESNET_D = "resnet_d"
STEMS = (STEM_CIFAR, STEM_IMAGENET, STEM_RESNET_D)

SHORTCUT_PROJECTION = "projection"
SHORTCUT_RESNET_D = "resnet_d"
SHORTCUTS = (SHORTCUT_PROJECTION, SHORTCUT_RESNET_D)


def reference_stem(image_size: int, sk_ratio: float) -> str:
  """The stem the original code picks: CIFAR for <=32 px, else ResNet-D with SK."""
  if image_size <= 32:
    return STEM_CIFAR
  return STEM_RESNET_D if sk_ratio > 0 else STEM_IMAGENET


def reference_shortcut(sk_ratio: float) -> str:
  """The original code couples the average-pool (ResNet-D) shortcut to SK."""
  return SHORTCUT_RESNET_D if sk_ratio > 0 else SHORTCUT_PROJECTION


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Backbone architecture."""
  resnet_depth: int = 18
  width_multiplier: float = 1.0
  sk_ratio: float = 0.0
  se_ratio: float = 0.0
  stem: str = STEM_CIFAR
  shortcut: str = SHORTCUT_PROJECTION
  global_bn: bool = True
  batch_norm_decay: float = 0.9
  batch_norm_epsilon: float = 1e-5
  fused_batch_norm: bool = False
  recompute_block_groups: int = 0


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Projection head and supervised (or linear-eval) head."""
  proj_head_mode: str = "nonlinear"
  num_proj_layers: int = 3
  proj_out_dim: int = 128
  ft_proj_selector: int = 0
  num_classes: int = 10
  lineareval_while_pretraining: bool = True
  zero_init_logits_layer: bool = False


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """NT-Xent and the optional MoCo-style memory of negatives (0 = off)."""
  temperature: float = 0.1
  hidden_norm: bool = True
  memory_size: int = 0
  memory_momentum: float = 0.999


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the images come from and how they are augmented."""
  dataset: str = "digits"
  data_dir: Optional[str] = None
  train_split: str = "train"
  eval_split: str = "test"
  image_size: int = 32
  # Side of the pretraining views; 0: image_size. The encoder is fully
  # convolutional, so smaller views only change the cost per step.
  pretrain_image_size: int = 0
  color_jitter_strength: float = 1.0
  min_crop_area: float = 0.08
  # Fine-tuning, supervised and distillation crops (the reference's 0.08).
  finetune_min_crop_area: float = 0.08
  horizontal_flip: bool = True
  use_blur: bool = True
  cache_dataset: bool = False
  skip_corrupt_images: bool = False
  tfds_download: bool = False  # Download and prepare a missing TFDS dataset.
  shuffle_buffer_multiplier: int = 0  # 0: the reference's 50 (<=32 px) or 10.
  seed: int = 0

  @property
  def flip_prob(self) -> float:
    return 0.5 if self.horizontal_flip else 0.0

  @property
  def pretrain_view_size(self) -> int:
    """Side of the pretraining views actually used."""
    return self.pretrain_image_size or self.image_size


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  optimizer: str = "lars"
  learning_rate: float = 0.3
  learning_rate_scaling: str = "linear"
  warmup_epochs: float = 10.0
  momentum: float = 0.9
  weight_decay: float = 1e-6
  lars_eeta: float = 0.001


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Lengths, batch sizes, checkpoints and the distribution strategy."""
  train_mode: str = "pretrain"
  mode: str = "train_then_eval"
  model_dir: str = "/tmp/tf_simclr"
  train_batch_size: int = 512  # 0: derived from the training set's size.
  train_epochs: float = 100.0
  train_steps: int = 0
  # An epoch-derived length is raised to this many steps (0: no minimum).
  min_train_steps: int = 0
  eval_batch_size: int = 256
  eval_steps: int = 0
  steps_per_loop: int = 0  # 0: min(checkpoint period, 50).
  checkpoint_epochs: float = 1.0
  checkpoint_steps: int = 0
  keep_checkpoint_max: int = 5
  checkpoint: Optional[str] = None
  fine_tune_after_block: int = -1
  distribution: str = "mirrored"
  use_tpu: bool = False
  tpu_name: Optional[str] = None
  tpu_zone: Optional[str] = None
  gcp_project: Optional[str] = None
  master: Optional[str] = None  # grpc://HOST:PORT of the TPU.
  jit_compile: bool = False
  precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16.
  knn_eval: bool = False
  knn_k: int = 200
  knn_temperature: float = 0.1
  log_every_steps: int = 0
  label_fraction: float = 0.0  # 0: every example of train_split.
  label_subset_file: Optional[str] = None
  teacher_checkpoint: Optional[str] = None
  unlabelled_split: Optional[str] = None  # None: train_split.
  distill_temperature: float = 1.0
  distill_label_weight: float = 0.0
  distill_temperature_squared: bool = False
  probe_label_fractions: tuple[float, ...] = ()
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  export_dir: Optional[str] = None  # None: MODEL_DIR/export.
  hub_export_dir: Optional[str] = None
  keep_exports: int = 1
  export_at_end: bool = True


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
    parts = {}
    for field in dataclasses.fields(cls):
      part_cls = field.default_factory  # type: ignore[misc]
      known = {f.name for f in dataclasses.fields(part_cls)}
      section = values.get(field.name, {})
      unknown = set(section) - known
      if unknown:
        raise ValueError(
            f"config section {field.name!r} has unknown keys {sorted(unknown)}")
      # JSON has no tuples; every sequence field here is a tuple.
      section = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in section.items()}
      parts[field.name] = part_cls(**section)
    return cls(**parts)

  @classmethod
  def from_json(cls, text: str) -> "ExperimentConfig":
    return cls.from_dict(json.loads(text))
