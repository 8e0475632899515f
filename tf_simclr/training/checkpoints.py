"""Checkpoint management: resume, warm start, original-code SavedModels."""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf
import tf_keras as keras


def is_saved_model_dir(path: str) -> bool:
  return tf.io.gfile.isdir(path) and tf.io.gfile.exists(
      os.path.join(path, "saved_model.pb"))


def resolve_checkpoint_prefix(path: str) -> str:
  """A checkpoint prefix from a prefix or a directory holding checkpoints.

  Raises:
    ValueError: if nothing restorable is found at `path`.
  """
  # The prefix test comes first: ram:// calls "ckpt-4" a directory when
  # "ckpt-4.index" exists.
  if tf.io.gfile.exists(path + ".index"):
    return path
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(
          f"checkpoint directory {path!r} holds no tf_simclr checkpoint "
          "(no 'checkpoint' index file) and no saved_model.pb")
    return latest
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
    from tf_simclr.models import reference_import  # Pulls in the proto parser.
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


class WorkerCheckpointManager:
  """Checkpointing on a non-chief worker of a multi-worker run.

  Saving reads synchronised-on-read variables (batch-norm moving statistics,
  metrics) through collectives, so every worker must save whenever the chief
  does. A non-chief worker writes into its own temporary directory and
  deletes it straight away; it restores from the chief's directory (model_dir
  on a file system all workers share).

  Args:
    checkpoint: the same objects the chief checkpoints.
    chief_directory: where the chief's checkpoints are.
    temp_directory: this worker's scratch directory, deleted after each save.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, chief_directory: str,
               temp_directory: str):
    self.checkpoint = checkpoint
    self.directory = chief_directory
    self.temp_directory = temp_directory

  @property
  def latest_checkpoint(self) -> Optional[str]:
    return tf.train.latest_checkpoint(self.directory)

  def save(self, checkpoint_number: Optional[int] = None) -> None:
    manager = tf.train.CheckpointManager(self.checkpoint, self.temp_directory,
                                         max_to_keep=1)
    manager.save(checkpoint_number=checkpoint_number)
    tf.io.gfile.rmtree(self.temp_directory)


def make_checkpoint_manager(model: keras.Model,
                            optimizer: Optional[keras.optimizers.Optimizer],
                            directory: str,
                            max_to_keep: int,
                            extra: Optional[dict] = None,
                            worker_temp_directory: Optional[str] = None):
  """Manager for `ckpt-<step>` files holding model, optimizer (and step).

  Args:
    model: the model.
    optimizer: its optimizer (its `iterations` is the step), or None.
    directory: model_dir.
    max_to_keep: checkpoints kept.
    extra: more objects to checkpoint by name (e.g. the memory bank).
    worker_temp_directory: set on non-chief workers of a multi-worker run:
      returns a `WorkerCheckpointManager` that saves there and restores from
      `directory`.
  """
  objects = {"model": model}
  if optimizer is not None:
    objects["optimizer"] = optimizer
  objects.update(extra or {})
  checkpoint = tf.train.Checkpoint(**objects)
  if worker_temp_directory:
    return WorkerCheckpointManager(checkpoint, directory,
                                   worker_temp_directory)
  return tf.train.CheckpointManager(checkpoint, directory,
                                    max_to_keep=max_to_keep)


def restore_for_resume(manager, prefix: str) -> None:
  """Restores model, optimizer and extras from `prefix` or raises ValueError.

  Every object this run has already built must be in the checkpoint with the
  same shapes: resuming another architecture's model_dir is an error, not a
  silent partial restore.
  """
  try:
    # A shape mismatch raises inside restore(); a missing object only in the
    # assertion.
    manager.checkpoint.restore(prefix).assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise ValueError(
        f"cannot resume from {prefix!r}: it does not match this run's "
        f"model/optimizer ({str(e).splitlines()[0]}); use another model_dir "
        "or the flags of the run that wrote it") from None
