"""Model cards for exported TF Hub modules.

The card is Markdown in the layout of TF Hub's model documentation, which
Kaggle Models imports: a `# Module <publisher>/<name>/<version>` title, a
one-sentence summary, `<!-- key: value -->` metadata lines (asset-path, task,
network-architecture, format, fine-tunable, license, dataset), then prose
sections: overview, architecture, training, metrics, input contract,
outputs, usage, fine-tuning and licence.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Optional

DEFAULT_PUBLISHER = "tf_simclr"
DEFAULT_LICENSE = "apache-2.0"
TASK = "image-feature-vector"
FORMAT = "saved_model_2"

_STAGES = {
    "pretrain": ("SimCLR self-supervised contrastive pretraining (NT-Xent); "
                 "no labels reach the backbone (a linear-evaluation head, if "
                 "present, is trained on stopped gradients)"),
    "finetune": "supervised fine-tuning of a SimCLR-pretrained network",
    "supervised": "supervised training from random initialisation",
    "distill": "self-distillation from a SimCLR teacher",
    "reference_import": ("weights imported from a SavedModel of the original "
                         "SimCLR TF2 code"),
}


def describe_model(model: Any, info: Any) -> dict[str, Any]:
  """Architecture facts of a tf_simclr model, for the card and metadata.

  Args:
    model: a built `SimCLRModel` (attributes that a model lacks are left
      out).
    info: the `serving.ModelInfo` of `model`.
  """
  description: dict[str, Any] = {}
  backbone = getattr(model, "backbone", None)
  for key in ("depth", "width_multiplier", "sk_ratio", "se_ratio", "stem",
              "shortcut"):
    if backbone is not None and hasattr(backbone, key):
      description[key] = getattr(backbone, key)
  head = getattr(model, "projection_head", None)
  for key, attribute in (("proj_head_mode", "mode"),
                         ("num_proj_layers", "num_layers"),
                         ("ft_proj_selector", "ft_proj_selector")):
    if head is not None and hasattr(head, attribute):
      description[key] = getattr(head, attribute)
  description["feature_dim"] = info.feature_dim
  description["projection_dim"] = info.projection_dim
  description["num_classes"] = info.num_classes
  description["parameters"] = int(sum(
      v.shape.num_elements() for v in getattr(model, "variables", [])))
  description["trainable_parameters"] = int(sum(
      v.shape.num_elements() for v in getattr(model, "trainable_variables",
                                              [])))
  return description


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
  value = config.get(name, {}) if isinstance(config, Mapping) else {}
  return value if isinstance(value, Mapping) else {}


def _check_text(metadata: Mapping[str, Any], key: str) -> Optional[str]:
  value = metadata.get(key)
  if value is None:
    return None
  if not isinstance(value, (str, int)) or isinstance(value, bool):
    raise ValueError(f"metadata[{key!r}] must be a string, got {value!r}")
  return str(value)


def _check_metrics(metadata: Mapping[str, Any]) -> dict[str, float]:
  metrics = metadata.get("metrics") or {}
  if not isinstance(metrics, Mapping) or not all(
      isinstance(v, numbers.Real) and not isinstance(v, bool)
      for v in metrics.values()):
    raise ValueError(
        f"metadata['metrics'] must map names to numbers, got {metrics!r}")
  return {str(k): float(v) for k, v in metrics.items()}


def _format_number(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.6g}"
  return str(value)


def _architecture_name(architecture: Mapping[str, Any]) -> str:
  depth = architecture.get("depth")
  name = f"resnet-{depth}" if depth else "resnet"
  if architecture.get("sk_ratio"):
    name += "-sk"
  return name


def render_model_card(metadata: Mapping[str, Any],
                      *,
                      architecture: Mapping[str, Any],
                      image_size: int,
                      feature_dim: int,
                      num_classes: Optional[int],
                      archive_name: Optional[str] = None) -> str:
  """Renders the Markdown model card of a TF Hub export.

  Args:
    metadata: optional keys `name`, `publisher`, `version`, `description`,
      `dataset`, `train_mode` (the stage), `global_step`, `training_data`
      (free text), `metrics` (name -> number), `license`, and `config` (an
      `ExperimentConfig.to_dict()`, from which dataset, stage, epochs and
      batch size are taken when not given directly).
    architecture: `describe_model`'s result.
    image_size: side S of the expected input images.
    feature_dim: width of the feature vector `__call__` returns.
    num_classes: classes of the supervised head, or None.
    archive_name: file name of the module archive (the asset path).

  Returns:
    The card text.

  Raises:
    ValueError: if a metadata value has the wrong type.
  """
  config = metadata.get("config") or {}
  data = _section(config, "data")
  train = _section(config, "train")
  depth = architecture.get("depth")
  width = architecture.get("width_multiplier")
  default_name = "simclr"
  if depth:
    default_name += f"_resnet{depth}"
  if width:
    default_name += f"_{_format_number(width)}x"
  name = _check_text(metadata, "name") or default_name
  publisher = _check_text(metadata, "publisher") or DEFAULT_PUBLISHER
  version = _check_text(metadata, "version") or "1"
  dataset = _check_text(metadata, "dataset") or data.get("dataset")
  stage = _check_text(metadata, "train_mode") or train.get("train_mode")
  license_name = _check_text(metadata, "license") or DEFAULT_LICENSE
  metrics = _check_metrics(metadata)
  step = metadata.get("global_step")
  summary = _check_text(metadata, "description") or (
      f"SimCLR {_architecture_name(architecture)} image feature vectors"
      + (f" trained on {dataset}." if dataset else "."))

  lines = [
      f"# Module {publisher}/{name}/{version}",
      "",
      summary,
      "",
      f"<!-- asset-path: {archive_name or 'module.tar.gz'} -->",
      f"<!-- task: {TASK} -->",
      f"<!-- network-architecture: {_architecture_name(architecture)} -->",
      f"<!-- format: {FORMAT} -->",
      "<!-- fine-tunable: true -->",
      f"<!-- license: {license_name} -->",
  ]
  if dataset:
    lines.append(f"<!-- dataset: {dataset} -->")
  lines += [
      "",
      "## Overview",
      "",
      "A ResNet trained with SimCLR (Chen et al., 2020: \"A Simple Framework "
      "for Contrastive Learning of Visual Representations\"; SimCLRv2: \"Big "
      "Self-Supervised Models are Strong Semi-Supervised Learners\"), "
      "exported by tf_simclr as a reusable TF2 SavedModel. Calling it maps "
      f"images to {feature_dim}-dimensional feature vectors (the backbone's "
      "global average pool), for linear classifiers, retrieval or "
      "fine-tuning.",
      "",
      "## Architecture",
      "",
      "| property | value |",
      "|---|---|",
  ]
  labels = (
      ("depth", "ResNet depth"), ("width_multiplier", "width multiplier"),
      ("sk_ratio", "selective-kernel ratio"),
      ("se_ratio", "squeeze-excitation ratio"), ("stem", "stem"),
      ("shortcut", "shortcut"), ("proj_head_mode", "projection head"),
      ("num_proj_layers", "projection layers"),
      ("projection_dim", "projection output width"),
      ("ft_proj_selector", "supervised head input (projection layer index)"),
      ("num_classes", "supervised head classes"),
      ("feature_dim", "feature vector width"),
      ("parameters", "parameters (all variables)"),
      ("trainable_parameters", "trainable parameters"),
  )
  for key, label in labels:
    if key in architecture:
      value = architecture[key]
      lines.append(f"| {label} | "
                   f"{'none' if value is None else _format_number(value)} |")
  lines += ["", "## Training", ""]
  stage_text = _STAGES.get(stage, stage) if stage else "not recorded"
  lines.append(f"* Stage: {stage_text}"
               + (f" (`train_mode={stage}`)." if stage in _STAGES else "."))
  training_data = _check_text(metadata, "training_data")
  if training_data or dataset:
    lines.append(f"* Training data: {training_data or dataset}.")
  else:
    lines.append("* Training data: not recorded.")
  if step is not None:
    lines.append(f"* Training steps: {step}.")
  for key, label in (("train_epochs", "Epochs"),
                     ("train_batch_size", "Global batch size")):
    if key in train:
      lines.append(f"* {label}: {_format_number(train[key])}.")
  lines.append(f"* Image size: {image_size} x {image_size}.")
  lines += ["", "## Metrics", ""]
  if metrics:
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_format_number(v)} |" for k, v in sorted(
        metrics.items())]
  else:
    lines.append("No evaluation metrics were recorded for this export.")
  lines += [
      "",
      "## Input",
      "",
      "`images`: float32 `[batch, height, width, 3]`, RGB values in [0, 1].",
      f"The network was trained on {image_size} x {image_size} images "
      "preprocessed as in SimCLR evaluation: " + (
          "images of that size are used as they are (others are resized "
          "bicubically)." if image_size <= 32 else
          "a central crop keeping 87.5 % of the shorter side, then a bicubic "
          f"resize to {image_size} x {image_size}.") +
      " The module does no resizing itself; it accepts other sizes, but "
      "features are best at the training size.",
      "",
      "## Outputs",
      "",
      f"* `module(images, training=False)`: float32 `[batch, {feature_dim}]` "
      "feature vectors.",
      "* `module.outputs(images, training=False)`: a dict of all named "
      "tensors (`initial_conv`, `initial_max_pool`, `block_group1`..`4`, "
      "`final_avg_pool`, `proj_head_input`, `proj_head_output`"
      + (f", `logits_sup` [batch, {num_classes}]" if num_classes else "")
      + ").",
      "",
      "## Usage",
      "",
      "```python",
      "# TF_USE_LEGACY_KERAS=1 must be set before TensorFlow is imported, so",
      "# that tensorflow_hub builds tf_keras (Keras 2) layers.",
      "import tensorflow_hub as hub",
      "import tf_keras as keras",
      "",
      "model = keras.Sequential([",
      f"    keras.Input([{image_size}, {image_size}, 3]),",
      "    hub.KerasLayer(MODULE_PATH, trainable=False),",
      "    keras.layers.Dense(NUM_CLASSES),",
      "])",
      "```",
      "",
      "`hub.load(MODULE_PATH)` gives the module object itself; call it as "
      "`module(images, training=False)`.",
      "",
      "## Fine-tuning",
      "",
      "Construct the layer with `hub.KerasLayer(MODULE_PATH, trainable=True)`."
      " While training, batch normalisation then uses batch statistics and "
      "updates the module's moving averages; at inference it uses the moving "
      "averages. Only the backbone's weights are trainable through "
      "`__call__`. `regularization_losses` is empty: SimCLR applies weight "
      "decay in its optimiser, so add your own if you want it. Use small "
      "learning rates and batches large enough for stable batch statistics.",
      "",
      "## Licence",
      "",
      f"The weights and this card are released under the `{license_name}` "
      "licence.",
      "",
  ]
  return "\n".join(lines)
