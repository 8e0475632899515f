"""Checkpoint management: resume, warm start, original-code SavedModels."""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf
import tf_keras as keras


def is_saved_model_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(
      os.path.join(path, "saved_model.pb"))


def resolve_checkpoint_prefix(path: str) -> str:
  """A checkpoint prefix from a prefix or a directory holding checkpoints.

  Raises:
    ValueError: if nothing restorable is found at `path`.
  """
  if os.path.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(
          f"checkpoint directory {path!r} holds no tf_simclr checkpoint "
          "(no 'checkpoint' index file) and no saved_model.pb")
    return latest
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise ValueError(
      f"checkpoint {path!r} is neither a checkpoint prefix (no {path}.index), "
      "a directory of checkpoints, nor a SavedModel directory")


def warm_start(model: keras.Model, path: str,
               print_fn=print) -> str:
  """Loads model weights (not optimizer or step) from `path` into `model`.

  `path` may be a tf_simclr checkpoint prefix or directory, or a SavedModel
  directory written by the original SimCLR TF2 code. The model must already
  be built.

  Returns:
    What was loaded, for the log.
  """
  if is_saved_model_dir(path):
    from tf_simclr.export import reference_import  # Pulls in the proto parser.
    reference_import.load_reference_weights_into(model, path)
    print_fn(f"warm start: loaded original-code SavedModel {path}")
    return path
  prefix = resolve_checkpoint_prefix(path)
  status = tf.train.Checkpoint(model=model).restore(prefix)
  status.expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(
        f"checkpoint {prefix!r} does not match this model's architecture: "
        f"{str(e).splitlines()[0]}") from None
  print_fn(f"warm start: restored model weights from {prefix}")
  return prefix


def make_checkpoint_manager(model: keras.Model,
                            optimizer: Optional[keras.optimizers.Optimizer],
                            directory: str,
                            max_to_keep: int,
                            extra: Optional[dict] = None
                            ) -> tf.train.CheckpointManager:
  """Manager for `ckpt-<step>` files holding model, optimizer (and step)."""
  objects = {"model": model}
  if optimizer is not None:
    objects["optimizer"] = optimizer
  objects.update(extra or {})
  checkpoint = tf.train.Checkpoint(**objects)
  return tf.train.CheckpointManager(checkpoint, directory,
                                    max_to_keep=max_to_keep)
