"""TF Serving export: versioned SavedModels with serving signatures.

`export_serving` writes `export_base/<version>/` (saved_model.pb, variables/,
assets.extra/) holding one root object whose functions all capture the same
model variables, so every weight is stored once:

* `serving_default` — input `image_bytes`: string [batch] of encoded JPEG,
  PNG, GIF (first frame) or BMP images of any size, decoded and passed through
  `data.augment.preprocess_for_eval` inside the graph;
* `serving_float` — input `images`: float32 [batch, H, W, 3] in [0, 1], any
  H and W, passed through the same preprocessing;
* both return `embedding` (final_avg_pool) and `projection`
  (proj_head_output), plus `logits`, `probabilities` (softmax) and `classes`
  (int64 ids of the `top_k` most probable classes, best first) when the model
  has a supervised head;
* `__call__(images, trainable)` — the original SimCLR code's interface
  (SPEC §8.2): float32 [batch, H, W, 3] already preprocessed, a Python bool,
  returning the model's whole named dict. `trainable=True` normalises with
  batch statistics and updates the moving averages of the loaded variables;
  unlike the original it never applies augmentation (quirk Q7 fixed).

The signatures declare their inputs' dtype but not their shape: TF Serving
and the TF2 loader trust a declared shape without checking it, so the rank and
the channel count are checked inside the graph instead, with the rest. A bad
request fails with `tf.errors.InvalidArgumentError` naming the problem (wrong
rank or channels, an empty batch, bytes that are not an image, float pixels
outside [0, 1] or NaN); a wrong dtype is refused by the loader before the
graph runs. None of them brings the serving process down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import types
import uuid
from typing import Any, Callable, Iterator, Mapping, Optional

import tensorflow as tf
import tf_keras as keras

from tf_simclr import paths
from tf_simclr.data import augment

SERVE_TAG = "serve"
SIGNATURE_BYTES = "serving_default"
SIGNATURE_FLOAT = "serving_float"
INPUT_BYTES = "image_bytes"
INPUT_FLOAT = "images"

OUTPUT_EMBEDDING = "embedding"
OUTPUT_PROJECTION = "projection"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"

# Keys of the model's output dict (tf_simclr.models); spelled out here so that
# importing this module does not build the model package.
FINAL_AVG_POOL = "final_avg_pool"
PROJ_HEAD_OUTPUT = "proj_head_output"
LOGITS_SUP = "logits_sup"

SAVED_MODEL_FILE = "saved_model.pb"
METADATA_DIR = "assets.extra"
METADATA_FILE = "tf_simclr_export.json"

_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"

# Magic numbers of the formats tf.io.decode_image accepts, checked up front so
# a bad request gets an error naming the offending batch positions.
_MAGIC_PREFIXES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a",
                   b"BM")


# ----------------------------------------------------------------------------
# Argument checks shared with hub.py.


def check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return value


def check_metadata(metadata: Any) -> dict[str, Any]:
  """Returns a JSON-serialisable copy of `metadata` (None gives {})."""
  if metadata is None:
    return {}
  if not isinstance(metadata, Mapping):
    raise ValueError(f"metadata must be a dict or None, got {metadata!r}")
  try:
    return json.loads(json.dumps(dict(metadata), default=_json_default))
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"metadata must be JSON-serialisable, got {metadata!r}: {e}") from None


def _json_default(value: Any) -> Any:
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return dataclasses.asdict(value)
  if isinstance(value, (set, frozenset)):
    return sorted(value)
  if hasattr(value, "numpy"):  # Eager tensors and variables.
    value = value.numpy()
  if hasattr(value, "tolist"):  # NumPy scalars and arrays.
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# ----------------------------------------------------------------------------
# Model inspection.


class ModelInfo:
  """What an export needs to know about a built model.

  Args:
    feature_dim: width of final_avg_pool.
    projection_dim: width of proj_head_output.
    num_classes: width of logits_sup, or None without a supervised head.
    output_keys: the keys the model's dict holds, sorted.
  """

  def __init__(self, feature_dim: int, projection_dim: int,
               num_classes: Optional[int], output_keys: tuple[str, ...]):
    self.feature_dim = feature_dim
    self.projection_dim = projection_dim
    self.num_classes = num_classes
    self.output_keys = output_keys


def inspect_model(model: Callable[..., Any], image_size: int) -> ModelInfo:
  """Builds `model` (if needed) on one blank image and reads its outputs.

  Raises:
    ValueError: if `model` does not return the tf_simclr output dict.
  """
  if not callable(model):
    raise ValueError(f"model must be a callable Keras model, got {model!r}")
  outputs = model(tf.zeros([1, image_size, image_size, 3]), training=False)
  if not isinstance(outputs, Mapping) or not {
      FINAL_AVG_POOL, PROJ_HEAD_OUTPUT} <= set(outputs):
    raise ValueError(
        "model must return a dict with at least "
        f"{FINAL_AVG_POOL!r} and {PROJ_HEAD_OUTPUT!r}, got "
        f"{sorted(outputs) if isinstance(outputs, Mapping) else outputs!r}")
  num_classes = (int(outputs[LOGITS_SUP].shape[-1])
                 if LOGITS_SUP in outputs else None)
  return ModelInfo(
      feature_dim=int(outputs[FINAL_AVG_POOL].shape[-1]),
      projection_dim=int(outputs[PROJ_HEAD_OUTPUT].shape[-1]),
      num_classes=num_classes,
      output_keys=tuple(sorted(outputs)))


def unique_variables(variables: Any) -> list[tf.Variable]:
  """`variables` without repeats, in order (a weight is saved once anyway)."""
  seen = set()
  result = []
  for variable in variables:
    if id(variable) not in seen:
      seen.add(id(variable))
      result.append(variable)
  return result


@contextlib.contextmanager
def per_replica_batch_norm(model: Any) -> Iterator[None]:
  """Traces the model's synchronised batch norms as ordinary ones.

  A synchronised batch norm all-reduces its statistics through custom
  gradients that the SavedModel does not store: every load would warn that
  gradients may fail, and the statistics would come from the less accurate
  E[x^2] - E[x]^2 formula. An exported function runs on one replica per call
  (TF Serving, or a Hub layer inside the user's own model), where the
  all-reduce adds nothing, so the plain per-replica computation is traced.

  Args:
    model: a Keras model; restored on exit.
  """
  layers = [
      layer for layer in model.submodules
      if isinstance(layer, keras.layers.BatchNormalization)
      and getattr(layer, "synchronized", False)
  ]
  for layer in layers:
    layer.synchronized = False
  try:
    yield
  finally:
    for layer in layers:
      layer.synchronized = True


@contextlib.contextmanager
def without_recomputation(model: Any) -> Iterator[None]:
  """Traces recomputed block groups (`recompute_block_groups`) as plain ones.

  Recomputation is a memory trade-off of the training step that built the
  model; its custom gradients are not stored in a SavedModel, so a Hub
  module fine-tuned with `training=True` would carry functions whose
  gradients "will likely fail". Exported functions get the plain graph.

  Args:
    model: a Keras model; restored on exit.
  """
  groups = [layer for layer in model.submodules
            if getattr(layer, "recompute_blocks", False)]
  for group in groups:
    group.recompute_blocks = False
  try:
    yield
  finally:
    for group in groups:
      group.recompute_blocks = True


# ----------------------------------------------------------------------------
# In-graph request handling.


def _substitute_if_invalid(valid: tf.Tensor, request: Callable[[], tf.Tensor],
                           placeholder: Callable[[], tf.Tensor]) -> tf.Tensor:
  """The request if it passed validation, else a harmless stand-in.

  The runtime may evaluate the assertions after the ops that consume the
  request; feeding those ops a valid stand-in keeps them from failing first
  with a less helpful message, so the assertion's message is the one
  reported.
  """
  return tf.cond(valid, request, placeholder)


def decode_images(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """Decodes and preprocesses a string batch into float32 [N, S, S, 3]."""
  image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
  # Run-time checks, each well defined for any rank (see
  # `preprocess_float_images`).
  recognised = tf.zeros(tf.shape(image_bytes), tf.bool)
  for magic in _MAGIC_PREFIXES:
    recognised = tf.logical_or(
        recognised, tf.equal(tf.strings.substr(image_bytes, 0, len(magic)),
                             magic))
  checks = [
      tf.debugging.Assert(
          tf.equal(tf.rank(image_bytes), 1),
          [f"{INPUT_BYTES} must be a 1-D batch of encoded images (a list of "
           "strings, even for one image); got shape", tf.shape(image_bytes)],
          name="check_rank"),
      tf.debugging.Assert(
          tf.size(image_bytes) > 0,
          [f"{INPUT_BYTES} must hold at least one encoded image; got an empty "
           "batch"], name="check_batch"),
      tf.debugging.Assert(
          tf.reduce_all(recognised),
          [f"{INPUT_BYTES} must hold encoded JPEG, PNG, GIF or BMP images; "
           "these batch positions hold something else:",
           tf.where(tf.logical_not(recognised))], name="check_format"),
  ]
  valid = tf.logical_and(tf.equal(tf.rank(image_bytes), 1),
                         tf.logical_and(tf.size(image_bytes) > 0,
                                        tf.reduce_all(recognised)))
  with tf.control_dependencies(checks):
    image_bytes = _substitute_if_invalid(
        valid, lambda: tf.reshape(image_bytes, [-1]),
        lambda: tf.reshape(tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)),
                           [1]))

  def decode_one(data: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    return augment.preprocess_for_eval(image, image_size)

  return tf.map_fn(
      decode_one, image_bytes,
      fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                        tf.float32))


def preprocess_float_images(images: tf.Tensor, image_size: int) -> tf.Tensor:
  """Validates float32 [N, H, W, 3] in [0, 1] and preprocesses each image."""
  images = tf.convert_to_tensor(images, tf.float32)
  # The signature declares no shape, so every check runs here at run time
  # (a declared shape would be trusted, not checked). Each condition is
  # well defined for any rank, so whichever assertion the runtime evaluates
  # first, a bad request is reported by the message that describes it.
  shape = tf.shape(images)
  is_rank4 = tf.equal(tf.size(shape), 4)
  dims = tf.concat([shape, tf.ones([4], tf.int32)], axis=0)[:4]
  not_rank4 = tf.logical_not(is_rank4)
  checks = [
      tf.debugging.Assert(
          is_rank4,
          [f"{INPUT_FLOAT} must be float32 [batch, height, width, 3]; got "
           "shape", shape], name="check_rank"),
      tf.debugging.Assert(
          tf.logical_or(not_rank4, tf.equal(dims[3], 3)),
          [f"{INPUT_FLOAT} must have 3 (RGB) channels in its last dimension; "
           "got shape", shape], name="check_channels"),
      tf.debugging.Assert(
          tf.logical_or(not_rank4, dims[0] > 0),
          [f"{INPUT_FLOAT} must hold at least one image; got an empty batch"],
          name="check_batch"),
      tf.debugging.Assert(
          tf.logical_or(not_rank4, tf.logical_and(dims[1] > 0, dims[2] > 0)),
          [f"{INPUT_FLOAT} must have height and width >= 1; got shape",
           shape], name="check_size"),
      # NaN fails this comparison too.
      tf.debugging.Assert(
          tf.reduce_all(tf.logical_and(images >= 0.0, images <= 1.0)),
          [f"{INPUT_FLOAT} must be float32 pixels in [0, 1] (divide 8-bit "
           "values by 255); got values outside [0, 1] or NaN"],
          name="check_range"),
  ]
  valid = tf.logical_and(
      is_rank4, tf.logical_and(
          tf.equal(dims[3], 3),
          tf.logical_and(dims[0] > 0, tf.logical_and(dims[1] > 0,
                                                     dims[2] > 0))))
  with tf.control_dependencies(checks):
    images = _substitute_if_invalid(
        valid,
        lambda: tf.ensure_shape(tf.reshape(images, dims),
                                [None, None, None, 3]),
        lambda: tf.zeros([1, 1, 1, 3]))
  return tf.map_fn(
      lambda image: augment.preprocess_for_eval(image, image_size), images,
      fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                        tf.float32))


# ----------------------------------------------------------------------------
# The exported object.


class ServingModule(tf.__internal__.tracking.AutoTrackable):
  """Root object of a TF Serving export.

  Only variables are tracked, not Keras layers: saving then skips Keras'
  per-layer tracing (seconds per export, megabytes of graph) and the
  SavedModel depends on nothing from tf_simclr or Keras when loaded.

  Args:
    model: a built tf_simclr `SimCLRModel` (or any Keras model returning the
      same dict).
    image_size: side of the images the model expects after preprocessing.
    num_classes: classes of the supervised head, or None if it has none.
    top_k: number of class ids in the `classes` output (at most
      `num_classes`).
  """

  def __init__(self, model: keras.Model, image_size: int,
               num_classes: Optional[int], top_k: int):
    super().__init__()
    self.image_size = image_size
    self.num_classes = num_classes
    self.top_k = top_k
    self.variables = unique_variables(model.variables)
    # Same list, same order, as the original code's export (SPEC §8.2).
    self.trainable_variables_list = unique_variables(
        model.trainable_variables)
    self.trainable_variables = self.trainable_variables_list

    # The model is reached through closures, never stored as an attribute,
    # which would make it part of the saved object graph.
    def original_call(inputs: tf.Tensor, trainable: bool
                      ) -> dict[str, tf.Tensor]:
      return dict(model(inputs, training=trainable))

    def predict(images: tf.Tensor) -> dict[str, tf.Tensor]:
      outputs = model(images, training=False)
      result = {
          OUTPUT_EMBEDDING: outputs[FINAL_AVG_POOL],
          OUTPUT_PROJECTION: outputs[PROJ_HEAD_OUTPUT],
      }
      if num_classes is not None:
        logits = outputs[LOGITS_SUP]
        probabilities = tf.nn.softmax(logits, axis=-1)
        result[OUTPUT_LOGITS] = logits
        result[OUTPUT_PROBABILITIES] = probabilities
        result[OUTPUT_CLASSES] = tf.cast(
            tf.math.top_k(probabilities, k=top_k).indices, tf.int64)
      return result

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
      return predict(decode_images(image_bytes, image_size))

    def serve_float(images: tf.Tensor) -> dict[str, tf.Tensor]:
      return predict(preprocess_float_images(images, image_size))

    # Two concrete functions, trainable=False and True, as in the original
    # export. (A bool-tensor argument would trace once, but its tf.cond
    # around every batch norm makes tracing, saving and gradients slower.)
    self.__call__ = tf.function(original_call)
    image_spec = tf.TensorSpec([None, None, None, 3], tf.float32,
                               name="inputs")
    for trainable in (False, True):
      self.__call__.get_concrete_function(image_spec, trainable)
    # Held outside the tracked attributes: reached only through the
    # signatures, they are not traced a second time while saving.
    self._untracked = types.SimpleNamespace()
    self._untracked.serve_bytes = tf.function(
        serve_bytes,
        input_signature=[tf.TensorSpec(None, tf.string, name=INPUT_BYTES)])
    self._untracked.serve_float = tf.function(
        serve_float,
        input_signature=[tf.TensorSpec(None, tf.float32, name=INPUT_FLOAT)])

  def signatures(self) -> dict[str, Any]:
    return {
        SIGNATURE_BYTES: self._untracked.serve_bytes.get_concrete_function(),
        SIGNATURE_FLOAT: self._untracked.serve_float.get_concrete_function(),
    }


# ----------------------------------------------------------------------------
# Files.


def write_metadata(directory: str, metadata: Mapping[str, Any]) -> str:
  """Writes `metadata` as JSON into `directory/assets.extra/`.

  Returns:
    The file's path.
  """
  extra = os.path.join(directory, METADATA_DIR)
  tf.io.gfile.makedirs(extra)
  path = os.path.join(extra, METADATA_FILE)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
  return path


def read_metadata(export_dir: str) -> dict[str, Any]:
  """Reads what `write_metadata` wrote into an export."""
  path = os.path.join(export_dir, METADATA_DIR, METADATA_FILE)
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


def temporary_sibling(path: str) -> str:
  """A fresh path next to `path`, hidden from TF Serving (not numeric)."""
  parent, name = paths.split(path)
  return os.path.join(parent, f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}")


def remove_saved_model(path: str) -> None:
  """Deletes a SavedModel directory, its `saved_model.pb` first.

  Loaders (TF Serving, `tf.saved_model.load`) find a SavedModel by that
  file, so on a store that deletes object by object the directory stops
  being loadable before it becomes incomplete.
  """
  marker = os.path.join(path, SAVED_MODEL_FILE)
  if tf.io.gfile.exists(marker):
    tf.io.gfile.remove(marker)
  paths.remove_tree(path)


def _copy_saved_model(source: str, target: str) -> None:
  """Copies the files of `source` into `target`, `saved_model.pb` last."""
  files = paths.list_files(source)
  files.sort(key=lambda name: name == SAVED_MODEL_FILE)
  for name in files:
    destination = os.path.join(target, name)
    # Explicitly: ram:// does not list directories only implied by a file.
    tf.io.gfile.makedirs(paths.split(destination)[0])
    tf.io.gfile.copy(os.path.join(source, name), destination, overwrite=True)


def replace_directory(source: str, target: str) -> None:
  """Moves the finished SavedModel `source` to `target`, replacing it.

  On a local disk (a plain path or a file:// URI) this is a rename within
  one directory, so a watcher sees either the old complete directory, none,
  or the new complete one, never a partial write.

  Object stores (gs://, s3://, ram://) cannot rename a directory atomically
  (gs:// renames object by object, in no set order). There an existing
  `target` is deleted (`saved_model.pb` first), `source` is copied in with
  `saved_model.pb` last and then deleted: `target` holds a loadable
  SavedModel only once all of its files are in place, but a reader listing
  the store may see the directory, not yet loadable, while it is copied.
  """
  if paths.local_path(target) is None:
    if tf.io.gfile.exists(target):
      remove_saved_model(target)
    _copy_saved_model(source, target)
    paths.remove_tree(source)
  elif tf.io.gfile.exists(target):
    parent, name = paths.split(target)
    old = os.path.join(parent, f"{_OLD_PREFIX}{name}-{uuid.uuid4().hex[:12]}")
    tf.io.gfile.rename(target, old)
    tf.io.gfile.rename(source, target)
    paths.remove_tree(old)
  else:
    tf.io.gfile.rename(source, target)


def list_versions(export_base: str) -> list[int]:
  """Numeric version sub-directories of `export_base`, ascending."""
  if not tf.io.gfile.isdir(export_base):
    return []
  versions = []
  for name in tf.io.gfile.listdir(export_base):
    name = name.rstrip("/")
    if name.isdigit() and tf.io.gfile.isdir(os.path.join(export_base, name)):
      versions.append(int(name))
  return sorted(versions)


def _check_version(version: Any) -> Optional[int]:
  if version is None:
    return None
  if isinstance(version, bool) or not isinstance(version, int) or version < 0:
    raise ValueError(f"version must be a non-negative int or None, got "
                     f"{version!r}")
  return version


def _choose_version(export_base: str, version: Optional[int],
                    metadata: Mapping[str, Any]) -> int:
  if version is not None:
    return version
  step = metadata.get("global_step")
  if step is not None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
      raise ValueError(
          f"metadata['global_step'] must be a non-negative int, got {step!r}")
    return step
  existing = list_versions(export_base)
  return existing[-1] + 1 if existing else 1


# ----------------------------------------------------------------------------
# Public API.


def export_serving(model: keras.Model,
                   export_base: str,
                   *,
                   image_size: int,
                   num_classes: Optional[int],
                   top_k: int = 5,
                   version: Optional[int] = None,
                   keep_exports: int = 1,
                   metadata: Optional[Mapping[str, Any]] = None) -> str:
  """Writes a TF Serving model version `export_base/<version>/`.

  Args:
    model: a tf_simclr model (built or not) returning its named dict.
    export_base: the directory TF Serving watches (its `--model_base_path`).
    image_size: side S of the preprocessed images (the training image size).
    num_classes: classes of the model's supervised head, or None to take
      them from the model; must be None for a model without one (pretraining
      without linear evaluation), which then exports embeddings and
      projections only.
    top_k: class ids returned in `classes`; capped at the number of classes.
    version: the version number; by default `metadata["global_step"]` when
      given, else one more than the newest existing version (or 1). An
      existing version with that number is replaced.
    keep_exports: keep only the newest this many versions; <= 0 keeps all.
    metadata: JSON-serialisable facts stored in
      `<version>/assets.extra/tf_simclr_export.json` (e.g. global_step,
      config, metrics).

  Returns:
    The version directory written.

  Raises:
    ValueError: on a bad argument or a model/num_classes mismatch.
  """
  if not isinstance(export_base, (str, os.PathLike)) or not os.fspath(
      export_base):
    raise ValueError(f"export_base must be a non-empty path, got "
                     f"{export_base!r}")
  export_base = os.fspath(export_base)
  check_positive_int("image_size", image_size)
  if num_classes is not None:
    check_positive_int("num_classes", num_classes)
  check_positive_int("top_k", top_k)
  version = _check_version(version)
  if isinstance(keep_exports, bool) or not isinstance(keep_exports, int):
    raise ValueError(f"keep_exports must be an int, got {keep_exports!r}")
  metadata = check_metadata(metadata)

  info = inspect_model(model, image_size)
  if num_classes is None:
    num_classes = info.num_classes
  elif info.num_classes is None:
    raise ValueError(
        f"num_classes must be None for a model without a supervised head, got "
        f"{num_classes!r}")
  elif num_classes != info.num_classes:
    raise ValueError(
        f"num_classes must match the model's supervised head "
        f"({info.num_classes}), got {num_classes!r}")
  effective_top_k = min(top_k, num_classes) if num_classes else top_k
  version = _choose_version(export_base, version, metadata)

  outputs = [OUTPUT_EMBEDDING, OUTPUT_PROJECTION]
  if num_classes is not None:
    outputs += [OUTPUT_LOGITS, OUTPUT_PROBABILITIES, OUTPUT_CLASSES]
  record = dict(metadata)
  record.update({
      "format": "tf_simclr_serving",
      "version": version,
      "image_size": image_size,
      "num_classes": num_classes,
      "top_k": effective_top_k,
      "feature_dim": info.feature_dim,
      "projection_dim": info.projection_dim,
      "signatures": {SIGNATURE_BYTES: INPUT_BYTES,
                     SIGNATURE_FLOAT: INPUT_FLOAT},
      "outputs": outputs,
      "call_outputs": list(info.output_keys),
  })

  tf.io.gfile.makedirs(export_base)
  target = os.path.join(export_base, str(version))
  staging = temporary_sibling(target)
  try:
    with per_replica_batch_norm(model):
      module = ServingModule(model, image_size, num_classes, effective_top_k)
      tf.saved_model.save(module, staging, signatures=module.signatures())
    write_metadata(staging, record)
    replace_directory(staging, target)
  finally:
    if tf.io.gfile.exists(staging):
      paths.remove_tree(staging)

  if keep_exports > 0:
    for old in list_versions(export_base)[:-keep_exports]:
      remove_saved_model(os.path.join(export_base, str(old)))
  return target
