"""TF Hub export: a reusable, fine-tunable TF2 SavedModel plus its card.

`export_hub(model, hub_dir, ...)` writes

* `hub_dir/` — a SavedModel following TF Hub's reusable SavedModel API and
  its image feature-vector convention:
  - `__call__(inputs, training=False)`: float32 [batch, H, W, 3] in [0, 1]
    (preprocessed like evaluation: S x S, see the card) -> float32
    [batch, feature_dim], the backbone's final_avg_pool;
  - `variables`, `trainable_variables` (the backbone's trainable weights, the
    ones `__call__` uses), `regularization_losses` (empty: SimCLR's weight
    decay lives in its optimiser, SPEC §4.2);
  - `outputs(inputs, training=False)`: the model's whole named dict
    (backbone tensors, projection, and logits with a supervised head).
  With `training=True`, batch norm uses batch statistics and updates the
  module's moving averages (what `hub.KerasLayer(..., trainable=True)` asks
  for while fitting); with False it uses the moving averages. No
  augmentation runs inside the module (quirk Q7 fixed).
* `hub_dir + ".tar.gz"` — the module's files at the archive root, the layout
  TF Hub / Kaggle Models accept for a SavedModel upload;
* `hub_dir + ".md"` — the model card (`model_card.render_model_card`).
"""

from __future__ import annotations

import os
import tarfile
from typing import Any, Mapping

import tensorflow as tf
import tf_keras as keras

from tf_simclr import paths
from tf_simclr.export import model_card
from tf_simclr.export import serving

ARCHIVE_SUFFIX = ".tar.gz"
# Float weights compress poorly: level 1 packs them several times faster
# than gzip's default 9, for an archive about a third larger.
ARCHIVE_COMPRESSLEVEL = 1
CARD_SUFFIX = ".md"


class HubModule(tf.__internal__.tracking.AutoTrackable):
  """Root object of a TF Hub export (reusable SavedModel API).

  Like `serving.ServingModule`, it tracks variables but no Keras layers, so
  the module loads without tf_simclr and each weight is stored once.

  Args:
    model: a built tf_simclr `SimCLRModel`; when it has a `backbone`
      attribute, `__call__` runs only the backbone, so the heads neither
      update batch-norm statistics nor appear as trainable.
  """

  def __init__(self, model: keras.Model):
    super().__init__()
    backbone = getattr(model, "backbone", None)
    self.variables = serving.unique_variables(model.variables)
    self.trainable_variables = serving.unique_variables(
        (backbone if backbone is not None else model).trainable_variables)
    self.regularization_losses = []

    def features(inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
      if backbone is not None:
        return backbone(inputs, training=training)[serving.FINAL_AVG_POOL]
      return model(inputs, training=training)[serving.FINAL_AVG_POOL]

    def outputs(inputs: tf.Tensor, training: bool = False
                ) -> dict[str, tf.Tensor]:
      return dict(model(inputs, training=training))

    # Python-bool `training`, one concrete function per value, as TF Hub's
    # reusable SavedModel API specifies.
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="inputs")
    self.__call__ = tf.function(features)
    self.outputs = tf.function(outputs)
    for function in (self.__call__, self.outputs):
      for training in (False, True):
        function.get_concrete_function(spec, training)


def _write_tar(entries: list[tuple[str, str]], fileobj) -> None:
  with tarfile.open(fileobj=fileobj, mode="w:gz",
                    compresslevel=ARCHIVE_COMPRESSLEVEL) as tar:
    for arcname, source in entries:
      info = tarfile.TarInfo(arcname)
      info.size = tf.io.gfile.stat(source).length
      info.mode = 0o644
      # No owner or timestamp: the same module always packs the same way.
      info.mtime = 0
      with tf.io.gfile.GFile(source, "rb") as f:
        tar.addfile(info, fileobj=f)


def write_archive(module_dir: str, archive_path: str) -> str:
  """Packs the files of `module_dir`, sorted, at the root of a .tar.gz.

  The archive is written under a hidden temporary name next to
  `archive_path` and renamed: a single file, so readers see the old archive
  or the complete new one (gs:// publishes an object only once it is
  complete; the rename is a server-side copy there).
  """
  entries = [(name, os.path.join(module_dir, name))
             for name in paths.list_files(module_dir)]
  staging = serving.temporary_sibling(archive_path)
  try:
    with tf.io.gfile.GFile(staging, "wb") as f:
      _write_tar(entries, f)
    tf.io.gfile.rename(staging, archive_path, overwrite=True)
  finally:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.remove(staging)
  return archive_path


def export_hub(model: keras.Model,
               hub_dir: str,
               *,
               image_size: int,
               metadata: Mapping[str, Any],
               archive: bool = True) -> str:
  """Writes a fine-tunable TF Hub module, its archive and its model card.

  Args:
    model: a tf_simclr model (built or not) returning its named dict.
    hub_dir: the module directory (replaced if it exists); the archive and
      card are written next to it as `hub_dir + ".tar.gz"` and
      `hub_dir + ".md"`.
    image_size: side S of the images the module expects (the training size).
    metadata: facts for the model card and
      `hub_dir/assets.extra/tf_simclr_export.json`; see
      `model_card.render_model_card` for the keys it reads (all optional).
    archive: also write the .tar.gz.

  Returns:
    `hub_dir`, loadable with `hub.load` and `hub.KerasLayer`.

  Raises:
    ValueError: on a bad argument or a model without the tf_simclr outputs.
  """
  if not isinstance(hub_dir, (str, os.PathLike)) or not os.fspath(
      hub_dir).rstrip("/"):
    raise ValueError(f"hub_dir must be a non-empty path, got {hub_dir!r}")
  hub_dir = os.fspath(hub_dir).rstrip("/")
  serving.check_positive_int("image_size", image_size)
  if not isinstance(metadata, Mapping):
    raise ValueError(f"metadata must be a dict, got {metadata!r}")
  metadata = serving.check_metadata(metadata)
  if not isinstance(archive, bool):
    raise ValueError(f"archive must be a bool, got {archive!r}")

  info = serving.inspect_model(model, image_size)
  architecture = model_card.describe_model(model, info)
  archive_path = hub_dir + ARCHIVE_SUFFIX
  # Rendered first: it validates the metadata before anything is written.
  card = model_card.render_model_card(
      metadata, architecture=architecture, image_size=image_size,
      feature_dim=info.feature_dim, num_classes=info.num_classes,
      archive_name=os.path.basename(archive_path) if archive else None)
  record = dict(metadata)
  record.update({
      "format": "tf_simclr_hub",
      "image_size": image_size,
      "feature_dim": info.feature_dim,
      "projection_dim": info.projection_dim,
      "num_classes": info.num_classes,
      "outputs": list(info.output_keys),
      "architecture": architecture,
  })

  parent, _ = paths.split(hub_dir)
  if parent:
    tf.io.gfile.makedirs(parent)
  staging = serving.temporary_sibling(hub_dir)
  try:
    with serving.per_replica_batch_norm(model), \
        serving.without_recomputation(model):
      module = HubModule(model)
      tf.saved_model.save(module, staging)
    serving.write_metadata(staging, record)
    serving.replace_directory(staging, hub_dir)
  finally:
    if tf.io.gfile.exists(staging):
      paths.remove_tree(staging)

  if archive:
    write_archive(hub_dir, archive_path)
  elif tf.io.gfile.exists(archive_path):
    # An archive of an earlier export would no longer match the module.
    tf.io.gfile.remove(archive_path)
  with tf.io.gfile.GFile(hub_dir + CARD_SUFFIX, "w") as f:
    f.write(card)
  return hub_dir
