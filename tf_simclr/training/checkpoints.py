"""Checkpoints a run writes and resumes from (for loading: `models.loading`)."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tf_keras as keras

from tf_simclr.models import loading


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
  loading.restore_and_verify(
      manager.checkpoint, prefix, root=True,
      against=("this run's model and optimizer, so the run cannot resume "
               "from it; use another model_dir or the flags of the run that "
               "wrote it"))
