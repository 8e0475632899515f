"""Every way weights come into a tf_simclr model.

Weights come from

* a tf_simclr checkpoint: a prefix such as `model_dir/ckpt-100`, or a
  directory, which means its latest checkpoint;
* a tf_simclr run: its model_dir, whose `config.json` (written by the
  experiment) gives the architecture, so it is never typed again;
* the original SimCLR code: a SavedModel (Google's released SimCLRv2 models
  among them) or a training checkpoint; the architecture is inferred from the
  variable shapes (`reference_import`).

Paths go through `tf.io.gfile`, so gs:// and ram:// work like local paths.

`load` builds a model from any of them, `load_teacher` a frozen distillation
teacher, `model_from_checkpoint` a model with its run's config for export, and
`warm_start` loads weights into a model a stage has already built. All of them
resolve paths with `resolve_checkpoint` and restore tf_simclr checkpoints with
`restore_and_verify`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import tensorflow as tf

from tf_simclr import configs
from tf_simclr import paths
from tf_simclr.models import builder
from tf_simclr.models import reference_import
from tf_simclr.models import simclr_model

CONFIG_FILE = "config.json"

# The one path resolver (defined beside `paths.checkpoint_reader` because
# `reference_import` needs it too) and the error it raises.
resolve_checkpoint = paths.resolve_checkpoint
CheckpointNotFoundError = paths.CheckpointNotFoundError

ORIGINAL_SAVED_MODEL = "original-code SavedModel"
ORIGINAL_CHECKPOINT = "original-code checkpoint"
TF_SIMCLR_CHECKPOINT = "tf_simclr checkpoint"

# Checkpoint key of the supervised head's variables in a tf_simclr checkpoint
# written as tf.train.Checkpoint(model=...): attribute names of SimCLRModel
# (`supervised_head`) and SupervisedHead (`dense`).
_HEAD_CHECKPOINT_KEY = (
    "model/supervised_head/dense/{}/.ATTRIBUTES/VARIABLE_VALUE")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model built from stored weights, and where they came from.

  Attributes:
    model: the built `SimCLRModel` holding the weights.
    config: the run's config from its config.json; else (an original-code
      model, or a checkpoint without config.json) the config the caller gave,
      with the loaded model's class count; None when the caller gave none.
    step: the checkpoint's step (0 for original-code models).
    source: the checkpoint prefix or SavedModel directory read.
    kind: `TF_SIMCLR_CHECKPOINT`, `ORIGINAL_SAVED_MODEL` or
      `ORIGINAL_CHECKPOINT`.
    config_path: the config.json the architecture came from, if any.
  """
  model: simclr_model.SimCLRModel
  config: Optional[configs.ExperimentConfig]
  step: int
  source: str
  kind: str
  config_path: Optional[str] = None


def is_saved_model_dir(path: "str | os.PathLike[str]") -> bool:
  path = os.fspath(path)
  return tf.io.gfile.isdir(path) and tf.io.gfile.exists(
      os.path.join(path, "saved_model.pb"))


def restore_and_verify(objects, path: "str | os.PathLike[str]", *,
                       against: str = "this model's architecture",
                       root: bool = False) -> str:
  """Restores `objects` from a tf_simclr checkpoint; every variable must match.

  The checkpoint may hold more than `objects` (an optimizer, a memory bank, a
  supervised head left out), but each variable of `objects` must be in it
  with the same shape: another architecture's checkpoint is an error, never a
  silent partial restore.

  Args:
    objects: what is restored from the checkpoint's `model`: a built model,
      or a stand-in with some of its attribute names; with `root`, the
      checkpoint's root (e.g. a `tf.train.Checkpoint` of model, optimizer
      and extras, to resume).
    path: a checkpoint prefix or a directory (`resolve_checkpoint`).
    against: what the checkpoint must match, for the error message.
    root: `objects` stands for the whole checkpoint.

  Returns:
    The checkpoint prefix restored.

  Raises:
    CheckpointNotFoundError: naming `path` when nothing restorable is there.
    ValueError: naming the prefix when a variable is missing or has another
      shape.
  """
  prefix = resolve_checkpoint(path)
  checkpoint = objects if root else tf.train.Checkpoint(model=objects)
  try:
    # A shape mismatch raises inside restore(); a missing variable only in
    # the assertion.
    status = checkpoint.restore(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise ValueError(
        f"checkpoint {prefix!r} does not match {against}: "
        f"{str(e).splitlines()[0]}") from None
  return prefix


def describe(model: simclr_model.SimCLRModel) -> str:
  """'ResNet-50 x1, sk_ratio 0.0625, 1000 classes', for log lines."""
  backbone = model.backbone
  head = model.supervised_head
  classes = (f"{head.num_classes} classes" if head is not None
             else "no supervised head")
  return (f"ResNet-{backbone.depth} x{backbone.width_multiplier:g}, "
          f"sk_ratio {backbone.sk_ratio:g}, {classes}")


def model_from_config(cfg: configs.ExperimentConfig,
                      image_size: Optional[int] = None,
                      replicas: int = 1,
                      freeze: bool = True,
                      train_mode: Optional[str] = None
                      ) -> simclr_model.SimCLRModel:
  """The model of `cfg`'s stage, built, with initial weights.

  Args:
    cfg: an experiment config.
    image_size: the side of the images the model is first called on;
      default `cfg.data.image_size`. The network is fully convolutional, so
      this creates the same variables at any size.
    replicas: replicas it runs on; synchronised batch norm (`global_bn`)
      only with more than one.
    freeze: freeze the blocks a fine-tuning run froze
      (`fine_tune_after_block`), so that the model (and its export) has the
      trainable variables the run had.
    train_mode: the stage whose model to build; default `cfg.train.train_mode`.
  """
  # Synchronised BN across one replica only adds collectives.
  model_cfg = dataclasses.replace(
      cfg.model, global_bn=cfg.model.global_bn and replicas > 1)
  train_mode = train_mode or cfg.train.train_mode
  frozen = (cfg.train.fine_tune_after_block
            if freeze and train_mode == builder.TRAIN_MODE_FINETUNE else -1)
  model = builder.build_model(model_cfg, cfg.head, train_mode,
                              frozen_through_block=frozen)
  size = image_size or cfg.data.image_size
  model(tf.zeros([1, size, size, 3]), training=False)
  return model


def _checkpoint_step(prefix: str) -> int:
  number = prefix.rsplit("-", 1)[-1]
  return int(number) if number.isdigit() else 0


def _read_config(path: str) -> configs.ExperimentConfig:
  with tf.io.gfile.GFile(path, "r") as f:
    return configs.ExperimentConfig.from_json(f.read())


def _check_image_size(image_size) -> None:
  if image_size is not None and (isinstance(image_size, bool) or
                                 not isinstance(image_size, int) or
                                 image_size < 1):
    raise ValueError(
        f"image_size must be a positive integer or None, got {image_size!r}")


def _locate(path: str) -> tuple[str, str]:
  """(the SavedModel directory or checkpoint prefix at `path`, its kind)."""
  if is_saved_model_dir(path):
    return path, ORIGINAL_SAVED_MODEL
  prefix = resolve_checkpoint(path)
  if reference_import.is_reference_checkpoint(prefix):
    return prefix, ORIGINAL_CHECKPOINT
  return prefix, TF_SIMCLR_CHECKPOINT


def _load(path: "str | os.PathLike[str]", *,
          image_size: Optional[int] = None,
          architecture: Optional[dict[str, Any]] = None,
          default_config: Optional[configs.ExperimentConfig] = None,
          freeze: bool = False) -> LoadedModel:
  """What `load`, `load_teacher` and `model_from_checkpoint` share."""
  path = os.fspath(path)
  architecture = dict(architecture or {})
  _check_image_size(image_size)
  try:
    prefix, kind = _locate(path)
  except CheckpointNotFoundError:
    raise CheckpointNotFoundError(
        "path must be a tf_simclr model_dir (with checkpoints and "
        f"{CONFIG_FILE}), a checkpoint prefix inside one, or a SavedModel "
        "or checkpoint of the original SimCLR code; nothing of that is at "
        f"{path!r}") from None
  config_path = None
  if kind == TF_SIMCLR_CHECKPOINT:
    # A directory's config.json is its own, whatever its checkpoint file
    # says about where the checkpoints were written.
    run_dir = paths.split(prefix)[0] if prefix == path else path
    if tf.io.gfile.exists(os.path.join(run_dir, CONFIG_FILE)):
      config_path = os.path.join(run_dir, CONFIG_FILE)
    elif default_config is None:
      raise ValueError(
          f"checkpoint {prefix!r} has no {CONFIG_FILE} beside it, so its "
          "architecture is unknown; pass the model_dir of the tf_simclr run "
          f"that wrote it (it holds {CONFIG_FILE}) or a checkpoint inside it")

  if kind != TF_SIMCLR_CHECKPOINT:
    if image_size is not None:
      architecture["image_size"] = image_size
    model = reference_import.load_reference_saved_model(prefix,
                                                        **architecture)
    config = default_config
    if config is not None:
      head = model.supervised_head
      config = dataclasses.replace(config, head=dataclasses.replace(
          config.head, num_classes=head.num_classes if head else 0))
    return LoadedModel(model, config, 0, prefix, kind)

  if architecture:
    raise ValueError(
        f"architecture arguments {sorted(architecture)} apply to "
        f"original-code models only; {path!r} is a tf_simclr checkpoint whose "
        f"architecture comes from {config_path or 'the given config'}")
  config = _read_config(config_path) if config_path else default_config
  model = model_from_config(config, image_size, freeze=freeze)
  against = (f"the architecture in {config_path!r}" if config_path
             else "the architecture of the given config")
  restore_and_verify(model, prefix, against=against)
  return LoadedModel(model, config, _checkpoint_step(prefix), prefix, kind,
                     config_path)


def load(path: "str | os.PathLike[str]", *,
         image_size: Optional[int] = None,
         **architecture: Any) -> simclr_model.SimCLRModel:
  """Builds a model holding the weights stored at `path`.

  Args:
    path: a tf_simclr model_dir (its latest checkpoint, architecture from its
      config.json), a checkpoint prefix inside one, or a SavedModel or
      training checkpoint (prefix or directory) of the original SimCLR code,
      such as Google's released SimCLRv2 models (architecture inferred from
      the variable shapes). Local, gs:// or any path tf.io.gfile reads.
    image_size: the image side the model is built at; default the run's
      `image_size` (32 for original-code models, whose stem then comes from
      the weights). For an original-code model without `stem` in
      `architecture`, it also picks the stem the original code uses at that
      size.
    **architecture: original-code models only: overrides of the inferred
      architecture (`reference_import.ARCHITECTURE_KEYS`).

  Returns:
    The `SimCLRModel`, not frozen, one replica (global_bn off); call it as
    `model(images, training=False)` on float images in [0, 1].

  Raises:
    CheckpointNotFoundError (a ValueError and a FileNotFoundError): naming
      `path` when nothing loadable is there.
    ValueError: naming the checkpoint when it does not match the
      architecture, or on bad arguments.
  """
  return _load(path, image_size=image_size,
               architecture=architecture).model


def model_from_checkpoint(cfg: configs.ExperimentConfig,
                          path: "str | os.PathLike[str]",
                          print_fn: Callable[[str], None] = print
                          ) -> LoadedModel:
  """The model export writes, from a checkpoint or an original SavedModel.

  A tf_simclr checkpoint is rebuilt with the config.json of the run that
  wrote it (blocks a fine-tuning run froze stay frozen, as in the export at
  the end of that run); `cfg` only serves a checkpoint without one. An original-code
  model's architecture is inferred from its weights and `cfg` is returned
  with the model's class count.

  Returns:
    The `LoadedModel`; its `config` is the one to export with.
  """
  loaded = _load(path, default_config=cfg, freeze=True)
  print_fn(f"loaded {loaded.kind} {loaded.source} ({describe(loaded.model)})")
  return loaded


def load_teacher(path: str,
                 strategy: tf.distribute.Strategy,
                 print_fn: Callable[[str], None] = print
                 ) -> simclr_model.SimCLRModel:
  """Builds and restores a distillation teacher with its own architecture.

  Args:
    path: a tf_simclr model_dir (with the config.json the experiment writes,
      and checkpoints; the latest is restored), a checkpoint prefix inside
      one, or an original-code SavedModel or checkpoint (architecture
      inferred from its variables).
    strategy: the teacher's variables are created in its scope.
    print_fn: receives one line describing the teacher.

  Returns:
    A built, non-trainable `SimCLRModel` with a supervised head.

  Raises:
    ValueError: if `path` is none of the above, the teacher has no supervised
      head, or the checkpoint does not match its config.
  """
  with strategy.scope():
    loaded = _load(path)
  teacher = loaded.model
  if teacher.supervised_head is None:
    raise ValueError(
        f"teacher {loaded.source!r} has no supervised head (it was "
        "pretrained without a supervised head: lineareval_while_pretraining="
        "False); fine-tune it first")
  origin = f", from {loaded.config_path}" if loaded.config_path else ""
  print_fn(f"teacher: {loaded.kind} {loaded.source} "
           f"({describe(teacher)}{origin})")
  teacher.trainable = False
  return teacher


def _tf_simclr_head_matches(head, prefix: str) -> bool:
  shapes = paths.checkpoint_reader(prefix).get_variable_to_shape_map()
  return all(
      shapes.get(_HEAD_CHECKPOINT_KEY.format(name)) ==
      getattr(head.dense, name).shape.as_list()
      for name in ("kernel", "bias"))


def warm_start(model: simclr_model.SimCLRModel,
               path: "str | os.PathLike[str]", *,
               zero_init_logits_layer: bool = False,
               print_fn: Callable[[str], None] = print) -> str:
  """Loads stored weights (never optimizer state or step) into `model`.

  Backbone and projection head are always loaded. The supervised head is
  loaded too when the source has one of the same shape (a pretraining run
  with linear eval on the same classes, as the original code does);
  otherwise it keeps its initial values. With `zero_init_logits_layer` the
  head's kernel and bias are zeroed after loading, which the original code
  intended but never did.

  Args:
    model: a built `SimCLRModel`.
    path: a tf_simclr checkpoint prefix or directory, or an original-code
      SavedModel or checkpoint.
    zero_init_logits_layer: zero the supervised head after loading.
    print_fn: receives one line saying what was loaded.

  Returns:
    The checkpoint prefix or SavedModel directory loaded.

  Raises:
    CheckpointNotFoundError: naming `path` when nothing restorable is there.
    ValueError: if the backbone or projection head does not match the
      model's architecture, or on bad arguments.
  """
  path = os.fspath(path)
  if not isinstance(model, simclr_model.SimCLRModel):
    raise ValueError(f"model must be a SimCLRModel, got {model!r}")
  if not model.built:
    raise ValueError("model must be built (called once) before warm start")
  head = model.supervised_head
  if zero_init_logits_layer and head is None:
    raise ValueError("zero_init_logits_layer=True needs a model with a "
                     "supervised head")
  source, kind = _locate(path)
  if kind == TF_SIMCLR_CHECKPOINT:
    with_head = head is not None and _tf_simclr_head_matches(head, source)
    # A stand-in with the model's attribute names matches the same keys but
    # leaves the supervised head out of the restore.
    restore_and_verify(
        model if with_head else tf.train.Checkpoint(
            backbone=model.backbone, projection_head=model.projection_head),
        source)
  else:
    with_head = head is not None and (
        reference_import.supervised_head_kernel_shape(source) ==
        head.dense.kernel.shape.as_list())
    reference_import.load_reference_weights_into(
        model, source, include_supervised_head=with_head)
  if zero_init_logits_layer:
    head.zero_weights()
  if head is None:
    what = "no supervised head"
  elif with_head:
    what = "supervised head loaded"
  else:
    what = ("supervised head not in the source (or another shape), left at "
            "its initial values")
  if zero_init_logits_layer:
    what += "; supervised head zeroed"
  print_fn(f"warm start: {kind} {source} ({what})")
  return source
