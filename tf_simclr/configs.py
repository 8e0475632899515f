"""Frozen configuration dataclasses, one per component.

The defaults are the `digits_cpu` preset's pretraining values: a run that
finishes in minutes on a 2-core CPU (`tf_simclr.presets` holds the other
presets and every stage's values). Each field's metadata carries its
command-line help and choices, so `flags/` defines one flag per field instead
of restating them; library code receives these configs (or their fields)
explicitly and never reads flags itself. Values are checked when a config is
built (ValueError naming the field and the value). Every dataclass is frozen
so a resolved configuration can be written to `model_dir/config.json` and
read back unchanged (`ExperimentConfig.to_dict` / `ExperimentConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Optional

STEM_CIFAR = "cifar"
STEM_IMAGENET = "imagenet"
STEM_RESNET_D = "resnet_d"
STEMS = (STEM_CIFAR, STEM_IMAGENET, STEM_RESNET_D)

SHORTCUT_PROJECTION = "projection"
SHORTCUT_RESNET_D = "resnet_d"
SHORTCUTS = (SHORTCUT_PROJECTION, SHORTCUT_RESNET_D)
# A stem or shortcut given as AUTO follows the original code's coupling to
# image size and SK (`resolve_auto`); presets and flags default to it.
AUTO = "auto"

MODES = ("train", "eval", "train_then_eval", "export")
TRAIN_MODES = ("pretrain", "finetune", "supervised", "distill")
SUPPORTED_DEPTHS = (18, 34, 50, 101, 152, 200)
DEFAULT_PRESET = "digits_cpu"


def reference_stem(image_size: int, sk_ratio: float) -> str:
  """The stem the original code picks: CIFAR for <=32 px, else ResNet-D with SK."""
  if image_size <= 32:
    return STEM_CIFAR
  return STEM_RESNET_D if sk_ratio > 0 else STEM_IMAGENET


def reference_shortcut(sk_ratio: float) -> str:
  """The original code couples the average-pool (ResNet-D) shortcut to SK."""
  return SHORTCUT_RESNET_D if sk_ratio > 0 else SHORTCUT_PROJECTION


def _field(default: Any, help_text: str, *, choices: Optional[tuple] = None,
           flag: bool = True) -> Any:
  """A field whose flag (same name) takes `help_text` and `choices`."""
  metadata: dict[str, Any] = {"help": help_text, "flag": flag}
  if choices is not None:
    metadata["choices"] = tuple(choices)
  if isinstance(default, tuple):
    return dataclasses.field(default_factory=lambda: default,
                             metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def _need(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _check_range(section: Any, name: str, *, gt: Optional[float] = None,
                 ge: Optional[float] = None, lt: Optional[float] = None,
                 le: Optional[float] = None) -> None:
  """ValueError naming `name` and its value when outside the given bounds."""
  value = getattr(section, name)
  low = ("(", gt) if gt is not None else ("[", ge) if ge is not None else None
  high = (")", lt) if lt is not None else ("]", le) if le is not None else None
  inside = ((low is None or value > low[1] or (low[0] == "[" and
                                                value == low[1])) and
            (high is None or value < high[1] or (high[0] == "]" and
                                                  value == high[1])))
  if inside:
    return
  if high is None:
    wanted = f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
  else:
    wanted = f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
  raise ValueError(f"{name} must be {wanted}, got {value}")


def _check_choices(section: Any) -> None:
  for field in dataclasses.fields(section):
    choices = field.metadata.get("choices")
    value = getattr(section, field.name)
    if choices is not None:
      # AUTO is a flag and preset value; a built config holds what it means.
      allowed = tuple(c for c in choices if c != AUTO)
      _need(value in allowed,
            f"{field.name} must be one of {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Backbone architecture."""
  resnet_depth: int = _field(18, "18, 34, 50, 101, 152 or 200.")
  width_multiplier: float = _field(
      0.25, "Channel multiplier; integers reproduce the reference, fractions "
      "are rounded to whole channels.")
  sk_ratio: float = _field(0.0, "Selective-kernel ratio (0 = off; SimCLRv2 "
                           "uses 0.0625).")
  se_ratio: float = _field(0.0, "Squeeze-excitation ratio (0 = off).")
  stem: str = _field(
      STEM_CIFAR, "auto: CIFAR stem for image_size<=32, else ResNet-D with "
      "SK, else ImageNet (the original code's coupling).",
      choices=(AUTO, *STEMS))
  shortcut: str = _field(
      SHORTCUT_PROJECTION,
      "auto: ResNet-D average-pool shortcut iff sk_ratio > 0.",
      choices=(AUTO, *SHORTCUTS))
  global_bn: bool = _field(True, "Synchronise BN statistics across replicas.")
  batch_norm_decay: float = _field(0.9, "BN moving-average momentum.")
  batch_norm_epsilon: float = _field(1e-5, "BN epsilon.", flag=False)
  fused_batch_norm: bool = _field(
      True, "Training-mode backbone batch norms through the fused kernel "
      "when statistics are not synchronised across replicas (same maths, "
      "fewer passes over each activation; on CPU 1.19x images/s for R18 "
      "pretraining and 1.20-1.37x for R50, bench/RESULTS.md). Off: the "
      "unfused graph the original code runs.")
  recompute_block_groups: int = _field(
      0, "Recompute the activations of block groups 1..k in the backward "
      "pass instead of keeping them (0 = keep all): less peak memory for "
      "some extra compute, same gradients.")

  def __post_init__(self):
    _check_choices(self)
    _need(self.resnet_depth in SUPPORTED_DEPTHS,
          f"resnet_depth must be one of {SUPPORTED_DEPTHS}, got "
          f"{self.resnet_depth}")
    _check_range(self, "width_multiplier", gt=0)
    _check_range(self, "sk_ratio", ge=0)
    _check_range(self, "se_ratio", ge=0)
    _check_range(self, "recompute_block_groups", ge=0, le=4)
    _check_range(self, "batch_norm_decay", ge=0, lt=1)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Projection head and supervised (or linear-eval) head."""
  proj_head_mode: str = _field("nonlinear", "Projection head type.",
                               choices=("none", "linear", "nonlinear"))
  num_proj_layers: int = _field(3, "Projection-head layers.")
  proj_out_dim: int = _field(128, "Projection output size.")
  ft_proj_selector: int = _field(
      0, "Projection-head layer feeding the supervised head (0 = encoder "
      "output, 1 = first projection layer, -1 = last).")
  # Filled in from the data source when the experiment starts.
  num_classes: int = _field(10, "Classes of the supervised head.", flag=False)
  lineareval_while_pretraining: bool = _field(
      True, "Train a stop-gradient linear head while pretraining.")
  zero_init_logits_layer: bool = _field(
      False, "Zero the classifier's kernel and bias before fine-tuning.")

  def __post_init__(self):
    _check_choices(self)
    _check_range(self, "num_proj_layers", ge=1)
    _check_range(self, "proj_out_dim", ge=1)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """NT-Xent and the optional MoCo-style memory of negatives (0 = off)."""
  temperature: float = _field(0.2, "NT-Xent temperature.")
  hidden_norm: bool = _field(
      True, "L2-normalise projections before the contrastive loss.")
  memory_size: int = _field(
      0, "Queue of negatives from a momentum encoder (MoCo-style; SimCLRv2 "
      "uses about 65536). 0 disables it.")
  memory_momentum: float = _field(
      0.999, "EMA momentum of the key (momentum) encoder.")

  def __post_init__(self):
    _check_range(self, "temperature", gt=0)
    _check_range(self, "memory_size", ge=0)
    _check_range(self, "memory_momentum", ge=0, le=1)
    _need(not (self.memory_size and not self.hidden_norm),
          "memory_size > 0 needs --hidden_norm (queued keys are "
          "L2-normalised), got --nohidden_norm")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the images come from and how they are augmented."""
  dataset: str = _field(
      "digits", "'digits' (embedded, offline), 'image_folder' (with "
      "--data_dir) or any TensorFlow Datasets name (cifar10, imagenet2012, "
      "...).")
  data_dir: Optional[str] = _field(None, "Image-folder root or TFDS data_dir.")
  train_split: str = _field("train", "Training split.")
  eval_split: str = _field("test", "Evaluation split.")
  image_size: int = _field(
      16, "Input resolution (<=32 selects the CIFAR stem and CIFAR-style "
      "evaluation with --stem=auto).")
  # The encoder is fully convolutional, so smaller views only change the
  # cost per step.
  pretrain_image_size: int = _field(
      0, "Side of the pretraining views (random crops are resized to it); "
      "0: --image_size. Fine-tuning and evaluation stay at --image_size: the "
      "encoder is convolutional, and smaller views cost fewer FLOPs per step.")
  # Kept at 0.5 for digits: brightness/contrast still act on grey images;
  # without them (strength 0) k-NN fell 0.864 -> 0.783.
  color_jitter_strength: float = _field(0.5, "Colour distortion strength.")
  min_crop_area: float = _field(
      0.4, "Smallest random-crop area in pretraining, as a fraction of the "
      "image. The original code uses 0.08 (effectively 0.1); the default "
      "keeps the 8x8 digits recognisable.")
  # Small crops of an 8x8 digit lose it. Fine-tuning at 10 % of the labels
  # (seed 0): 0.877 with the reference's 0.08, 0.905 with 0.4, 0.936 with 0.7;
  # seeds 0/1/2 median 0.939 with 0.7 (README, digits results).
  finetune_min_crop_area: float = _field(
      0.7, "Smallest random-crop area when fine-tuning, training supervised "
      "or distilling (the original code uses 0.08).")
  # A mirrored digit is another digit or none (pretraining 20 epochs:
  # linear eval 0.766 -> 0.894 without flips).
  horizontal_flip: bool = _field(
      False, "Random left-right flips in every training stage (off for "
      "digits, whose mirror images are not digits).")
  use_blur: bool = _field(False, "Random Gaussian blur in pretraining.")
  cache_dataset: bool = _field(False, "Cache decoded examples in memory.")
  skip_corrupt_images: bool = _field(
      False, "Skip unreadable image files (counted) instead of failing.")
  tfds_download: bool = _field(
      False, "Download and prepare a TFDS dataset missing from --data_dir "
      "(needs internet access); without it a missing dataset is an error "
      "saying how to prepare it.")
  shuffle_buffer_multiplier: int = _field(
      0, "0: the reference's 50 (<=32 px) or 10.", flag=False)
  # Set by --seed together with TrainConfig.seed.
  seed: int = _field(0, "")

  def __post_init__(self):
    _check_range(self, "image_size", ge=8)
    _need(self.pretrain_image_size == 0 or self.pretrain_image_size >= 8,
          "pretrain_image_size must be 0 or >= 8, got "
          f"{self.pretrain_image_size}")
    _check_range(self, "color_jitter_strength", ge=0, le=1.25)
    _check_range(self, "min_crop_area", gt=0, le=1)
    _check_range(self, "finetune_min_crop_area", gt=0, le=1)

  @property
  def flip_prob(self) -> float:
    return 0.5 if self.horizontal_flip else 0.0

  @property
  def pretrain_view_size(self) -> int:
    """Side of the pretraining views actually used."""
    return self.pretrain_image_size or self.image_size


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  optimizer: str = _field("lars", "Optimiser.",
                          choices=("lars", "momentum", "adam"))
  learning_rate: float = _field(0.3, "Base learning rate (scaled).")
  learning_rate_scaling: str = _field(
      "linear", "linear: lr*B/256; sqrt: lr*sqrt(B).",
      choices=("linear", "sqrt"))
  warmup_epochs: float = _field(2.0, "Linear warm-up length.")
  momentum: float = _field(0.9, "Momentum.")
  weight_decay: float = _field(1e-4, "Weight decay.")
  lars_eeta: float = _field(0.001, "LARS trust coefficient.", flag=False)

  def __post_init__(self):
    _check_choices(self)
    for name in ("learning_rate", "warmup_epochs", "weight_decay"):
      _check_range(self, name, ge=0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Lengths, batch sizes, checkpoints and the distribution strategy."""
  train_mode: str = _field("pretrain", "Training stage.", choices=TRAIN_MODES)
  mode: str = _field("train_then_eval", "What to do.", choices=MODES)
  model_dir: str = _field(
      "/tmp/tf_simclr", "Checkpoints, summaries, config.json and result.json.")
  train_batch_size: int = _field(
      256, "Global training batch. 0: derived from the training set's size "
      "(the default of the finetune, supervised and distill stages of the "
      "digits_cpu preset).")
  # digits: 60 epochs (338 steps at batch 256) instead of 20: linear eval
  # 0.894 -> 0.942, k-NN 0.864 -> 0.880, 1 % probe 0.599 -> 0.671.
  train_epochs: float = _field(
      60.0, "Training length in epochs (ignored if train_steps > 0).")
  train_steps: int = _field(
      0, "Training length in steps; wins over train_epochs when > 0.")
  min_train_steps: int = _field(
      0, "Raise an epoch-derived run to at least this many steps (the "
      "digits_cpu preset's finetune, supervised and distill stages use 300 "
      "unless --train_epochs or --train_steps is given).")
  eval_batch_size: int = _field(256, "Global evaluation batch.")
  eval_steps: int = _field(0, "Evaluation steps (0 = whole split).")
  steps_per_loop: int = _field(
      0, "Steps per compiled call (0 = min(checkpoint period, 50)).")
  checkpoint_epochs: float = _field(1.0, "Checkpoint period in epochs.")
  checkpoint_steps: int = _field(
      0, "Checkpoint period in steps; wins over checkpoint_epochs when > 0.")
  keep_checkpoint_max: int = _field(5, "Checkpoints kept.")
  checkpoint: Optional[str] = _field(
      None, "Warm start (model weights only) from a tf_simclr checkpoint "
      "(prefix or directory) or from a SavedModel written by the original "
      "SimCLR TF2 code. Ignored when model_dir already holds a checkpoint "
      "(resume wins).")
  fine_tune_after_block: int = _field(
      -1, "Freeze the stem and block groups up to this one.")
  distribution: str = _field(
      "mirrored", "tf.distribute strategy (multi_worker reads TF_CONFIG).",
      choices=("mirrored", "multi_worker", "one_device", "tpu"))
  use_tpu: bool = _field(False, "Shorthand for --distribution=tpu.")
  tpu_name: Optional[str] = _field(None, "TPU name or address.")
  tpu_zone: Optional[str] = _field(
      None, "GCE zone of --tpu_name (default: found from the VM's "
      "metadata). TPU only.")
  gcp_project: Optional[str] = _field(
      None, "GCP project of --tpu_name (default: the VM's). TPU only.")
  master: Optional[str] = _field(
      None, "grpc://HOST:PORT address of the TPU, instead of --tpu_name. "
      "TPU only.")
  jit_compile: bool = _field(
      False, "XLA-compile the per-replica forward and backward pass (single "
      "replica) and the eval and feature steps. On TPU every step is "
      "XLA-compiled anyway. Off by default: on CPU, XLA's convolutions are "
      "slower than the default kernels (bench/RESULTS.md: 0.60x images/s "
      "for R18 pretraining).")
  precision: str = _field(
      "float32", "Training precision. The mixed policies compute in 16 bits "
      "and keep variables, losses, softmax and batch-norm statistics in "
      "float32; mixed_float16 adds dynamic loss scaling.",
      choices=("float32", "mixed_bfloat16", "mixed_float16"))
  # digits: the main command reports k-NN and the frozen-feature probes next
  # to their baselines (random-init encoder, raw pixels).
  knn_eval: bool = _field(
      True, "Report k-NN top-1 on final_avg_pool features at eval.")
  knn_k: int = _field(200, "Neighbours for the k-NN monitor.")
  knn_temperature: float = _field(0.1, "k-NN vote temperature.")
  log_every_steps: int = _field(
      0, "Progress line period (0 = every loop).")
  label_fraction: float = _field(
      0.0, "Train the finetune/supervised stages (and distillation's "
      "labelled term) on this deterministic, class-balanced fraction of "
      "train_split (e.g. 0.01 or 0.1); 0 uses every label.")
  label_subset_file: Optional[str] = _field(
      None, "File of example ids / file names (one per line) to use as the "
      "labelled set instead of --label_fraction.")
  teacher_checkpoint: Optional[str] = _field(
      None, "--train_mode=distill: a fine-tuned tf_simclr run (its "
      "config.json gives the teacher's architecture) or an original-code "
      "SavedModel.")
  unlabelled_split: Optional[str] = _field(
      None, "Distillation's unlabelled split (default: train_split, labels "
      "ignored).")
  distill_temperature: float = _field(
      1.0, "Softmax temperature of distillation (paper: 0.1 for "
      "self-distillation, 1.0 big-to-small).")
  distill_label_weight: float = _field(
      0.0, "alpha: loss = (1-alpha)*distill + alpha*labelled CE.")
  distill_temperature_squared: bool = _field(
      False, "Multiply the distillation loss by temperature^2.")
  probe_label_fractions: tuple[float, ...] = _field(
      (0.01, 0.1, 1.0), "Comma-separated label fractions (e.g. 0.01,0.1) for "
      "a logistic-regression probe on frozen features after pretraining, "
      "reported against the same probe on a randomly initialised encoder.")
  seed: int = _field(0, "Seed for data order, augmentation and init.")

  def __post_init__(self):
    _check_choices(self)
    _need(not (self.use_tpu and self.distribution not in ("mirrored", "tpu")),
          f"--use_tpu conflicts with --distribution={self.distribution}")
    if self.use_tpu:
      object.__setattr__(self, "distribution", "tpu")
    object.__setattr__(self, "probe_label_fractions",
                       tuple(float(v) for v in self.probe_label_fractions))
    for v in self.probe_label_fractions:
      _need(0.0 < v <= 1.0,
            f"probe_label_fractions values must be in (0, 1], got {v}")
    _need(self.train_batch_size >= 0,
          "train_batch_size must be >= 0 (0 = derive), got "
          f"{self.train_batch_size}")
    _check_range(self, "min_train_steps", ge=0)
    _check_range(self, "eval_batch_size", ge=1)
    for name in ("tpu_zone", "gcp_project", "master"):
      value = getattr(self, name)
      _need(value is None or self.distribution == "tpu",
            f"--{name} only applies to --use_tpu, got --{name}={value} with "
            f"--distribution={self.distribution}")
    _need(not (self.tpu_name and self.master),
          f"--tpu_name and --master are exclusive, got {self.tpu_name!r} and "
          f"{self.master!r}")
    _need(self.master is None or self.master.startswith("grpc://"),
          f"--master must be a grpc://HOST:PORT address, got {self.master!r}")
    _need(self.train_steps > 0 or self.train_epochs > 0,
          "one of train_steps or train_epochs must be > 0, got "
          f"train_steps={self.train_steps}, train_epochs={self.train_epochs}")
    _check_range(self, "train_steps", ge=0)
    _need(self.checkpoint_steps > 0 or self.checkpoint_epochs > 0,
          "one of checkpoint_steps or checkpoint_epochs must be > 0, got "
          f"checkpoint_steps={self.checkpoint_steps}, checkpoint_epochs="
          f"{self.checkpoint_epochs}")
    _check_range(self, "keep_checkpoint_max", ge=1)
    _check_range(self, "fine_tune_after_block", ge=-1, le=4)
    _need(not (self.train_mode == "pretrain" and
               self.fine_tune_after_block != -1 and self.mode != "eval"),
          "fine_tune_after_block only applies to --train_mode=finetune, got "
          f"{self.fine_tune_after_block} with --train_mode={self.train_mode}")
    _check_range(self, "label_fraction", ge=0, le=1)
    _need(not (self.label_fraction and self.label_subset_file),
          "--label_fraction and --label_subset_file are exclusive, got "
          f"{self.label_fraction} and {self.label_subset_file!r}")
    _check_range(self, "distill_temperature", gt=0)
    _check_range(self, "distill_label_weight", ge=0, le=1)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  export_dir: Optional[str] = _field(
      None, "TF Serving export base (numbered versions); default "
      "MODEL_DIR/export. Written at the end of training and by "
      "--mode=export.")
  hub_export_dir: Optional[str] = _field(
      None, "Also write a fine-tunable TF Hub module (+ .tar.gz and model "
      "card) here.")
  keep_exports: int = _field(
      1, "Newest serving versions kept (<= 0 keeps all).")
  export_at_end: bool = _field(True,
                               "Export for TF Serving when training ends.")


# The config sections, by ExperimentConfig field name.
SECTIONS = {"model": ModelConfig, "head": HeadConfig, "loss": LossConfig,
            "data": DataConfig, "optimizer": OptimizerConfig,
            "train": TrainConfig, "export": ExportConfig}


@dataclasses.dataclass(frozen=True)
class FlagField:
  """One command-line name and the config fields it sets."""
  name: str
  type: Any  # bool, int, float, str, Optional[str] or tuple[float, ...].
  default: Any
  help: str
  choices: Optional[tuple]
  targets: tuple[tuple[str, str], ...]  # (section, field) pairs.


def flag_fields() -> dict[str, FlagField]:
  """Every config field exposed as a flag, by flag name.

  A name shared by several sections (`seed`) is one flag setting them all.
  """
  found: dict[str, FlagField] = {}
  for section, cls in SECTIONS.items():
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
      if not field.metadata.get("flag", False):
        continue
      default = (field.default_factory()  # type: ignore[misc]
                 if field.default is dataclasses.MISSING else field.default)
      known = found.get(field.name)
      if known is None:
        found[field.name] = FlagField(
            field.name, hints[field.name], default, field.metadata["help"],
            field.metadata.get("choices"), ((section, field.name),))
      else:
        found[field.name] = dataclasses.replace(
            known, help=known.help or field.metadata["help"],
            targets=known.targets + ((section, field.name),))
  return found


def resolve_auto(values: dict[str, Any]) -> dict[str, Any]:
  """`values` (flat, by flag name) with an AUTO stem and shortcut resolved."""
  values = dict(values)
  if values.get("stem") == AUTO:
    values["stem"] = reference_stem(values["image_size"], values["sk_ratio"])
  if values.get("shortcut") == AUTO:
    values["shortcut"] = reference_shortcut(values["sk_ratio"])
  return values


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Every component's config, plus the preset and overrides it came from.

  `preset` names the `tf_simclr.presets` preset the values started from and
  `overrides` the values given on top of it (flag names), both recorded in
  config.json; the sections hold the values actually used.
  """
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
  preset: str = DEFAULT_PRESET
  # A record, not an input; a dict cannot be hashed.
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict,
                                                hash=False)

  def __post_init__(self):
    d, t = self.data, self.train
    _need(not (d.pretrain_image_size and t.train_mode != "pretrain"),
          "pretrain_image_size only applies to --train_mode=pretrain, got "
          f"{d.pretrain_image_size} with --train_mode={t.train_mode}")
    _need(not (self.loss.memory_size and self.head.proj_head_mode == "none"),
          "memory_size > 0 needs a projection head, got "
          "--proj_head_mode=none")

  def validate(self) -> "ExperimentConfig":
    """Checks that the config can run: the paths its mode and stage need.

    Values are checked when a config is built; this adds what only a run
    needs (a checkpoint to fine-tune or export, a teacher to distill, ...).

    Returns:
      self.

    Raises:
      ValueError: naming the missing flag.
    """
    t, d = self.train, self.data
    _need(not (t.train_mode == "finetune" and t.mode != "eval"
               and not t.checkpoint),
          "--train_mode=finetune needs --checkpoint=PATH (a pretraining run "
          "or an original-code SavedModel)")
    _need(not (t.train_mode == "distill" and t.mode != "eval"
               and not t.teacher_checkpoint),
          "--train_mode=distill needs --teacher_checkpoint=PATH")
    _need(not (t.mode == "export" and not t.checkpoint),
          "--mode=export needs --checkpoint=PATH (a tf_simclr checkpoint or "
          "an original-code SavedModel)")
    _need(not (d.dataset == "image_folder" and not d.data_dir),
          "--dataset=image_folder needs --data_dir=ROOT (one sub-folder per "
          "split, one per class)")
    return self

  @classmethod
  def from_flat(cls, values: dict[str, Any], *, preset: str = DEFAULT_PRESET,
                overrides: Optional[dict[str, Any]] = None
                ) -> "ExperimentConfig":
    """Builds a config from values keyed by flag name (missing: defaults).

    An AUTO stem or shortcut is resolved from image_size and sk_ratio.
    """
    fields = flag_fields()
    unknown = set(values) - set(fields)
    if unknown:
      raise ValueError(f"unknown config values {sorted(unknown)}; known: "
                       f"{sorted(fields)}")
    values = resolve_auto(values)
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
      for section, field_name in fields[name].targets:
        sections[section][field_name] = value
    return cls(**{s: SECTIONS[s](**v) for s, v in sections.items()},
               preset=preset, overrides=dict(overrides or {}))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"config has unknown sections {sorted(unknown)}")
    parts: dict[str, Any] = {}
    for name, part_cls in SECTIONS.items():
      known = {f.name for f in dataclasses.fields(part_cls)}
      section = values.get(name, {})
      unknown = set(section) - known
      if unknown:
        raise ValueError(
            f"config section {name!r} has unknown keys {sorted(unknown)}")
      parts[name] = part_cls(**_tuples(section))
    # A config.json written before presets existed has neither key.
    if "preset" in values:
      parts["preset"] = values["preset"]
    parts["overrides"] = _tuples(values.get("overrides") or {})
    return cls(**parts)

  @classmethod
  def from_json(cls, text: str) -> "ExperimentConfig":
    return cls.from_dict(json.loads(text))


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
  # JSON has no tuples; every sequence value of a config is a tuple.
  return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
