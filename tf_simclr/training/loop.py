"""The outer training loop shared by every stage.

Each stage supplies an `orbit.AbstractTrainer` whose `train(num_steps)` runs
`num_steps` compiled steps and returns scalar metrics. This loop drives it to
exactly `total_steps` (the original code overshoots to a multiple of the
checkpoint period, SPEC quirk Q6), saves checkpoints on the period, writes
TensorBoard summaries, prints a progress line and stops on a non-finite loss.

On a preemption notice (SIGTERM) it saves a checkpoint of the step it stopped
at and raises `PreemptedError`. A single worker saves after the call in
flight. The workers of a multi-worker job first agree on a step through
`tf.distribute.experimental.PreemptionCheckpointHandler`: a SIGTERM to any of
them makes all of them save that step after the next call and stop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

import numpy as np
import orbit
import tensorflow as tf

from tf_simclr.errors import NonFiniteLossError
from tf_simclr.errors import PreemptedError


@dataclasses.dataclass
class LoopSettings:
  """How the loop runs.

  Attributes:
    total_steps: global step to train up to.
    steps_per_loop: steps per compiled call.
    checkpoint_steps: save period in steps.
    images_per_step: global batch (source images, each counted once).
    finite_keys: metrics checked for finiteness after every call (those a
      trainer does not report are skipped).
    log_every_steps: progress line period (0 = every call).
    is_chief: only the chief prints and writes summaries.
    save_on_sigterm: on SIGTERM (a preemption notice), finish the current
      call, save a checkpoint of that step and raise `PreemptedError`. For
      single-worker runs; `TrainLoop`'s `cluster_resolver` covers
      multi-worker ones.
  """
  total_steps: int
  steps_per_loop: int
  checkpoint_steps: int
  images_per_step: int
  finite_keys: tuple[str, ...] = ("total_loss",)
  log_every_steps: int = 0
  is_chief: bool = True
  save_on_sigterm: bool = False


def _format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours:d}:{minutes:02d}:{secs:02d}"


class TrainLoop:
  """Runs a trainer to `total_steps` with checkpoints, summaries and progress.

  Args:
    trainer: runs `num_steps` steps per call and returns scalar metrics.
    global_step: the optimizer's iteration counter.
    checkpoint_manager: saves into model_dir; also used to name the last good
      checkpoint in errors.
    summary_writer: TensorBoard writer (a no-op writer on non-chief workers).
    settings: see `LoopSettings`.
    extra_summaries: called with the global step after each call, inside the
      writer's context, to write summaries that are not training metrics.
    print_fn: where progress lines go.
    cluster_resolver: set for the workers of a multi-worker
      (`MultiWorkerMirroredStrategy`) run: a SIGTERM to any worker makes every
      worker save the same step and raise `PreemptedError`.
  """

  def __init__(self,
               trainer: orbit.AbstractTrainer,
               global_step: tf.Variable,
               checkpoint_manager: tf.train.CheckpointManager,
               summary_writer,
               settings: LoopSettings,
               extra_summaries: Optional[Callable[[int], None]] = None,
               print_fn: Callable[[str], None] = print,
               cluster_resolver: Optional[
                   tf.distribute.cluster_resolver.ClusterResolver] = None):
    if settings.steps_per_loop < 1:
      raise ValueError(
          f"steps_per_loop must be >= 1, got {settings.steps_per_loop}")
    self.trainer = trainer
    self.global_step = global_step
    self.checkpoint_manager = checkpoint_manager
    self.summary_writer = summary_writer
    self.settings = settings
    self.extra_summaries = extra_summaries
    self.print_fn = print_fn
    self.cluster_resolver = cluster_resolver
    self.last_metrics: dict[str, float] = {}
    self._sigterm_received = False
    self._saved_step: Optional[int] = None

  def _save(self, step: int) -> Optional[str]:
    self._saved_step = step
    return self.checkpoint_manager.save(checkpoint_number=step)

  def run(self) -> dict[str, float]:
    """Trains until `total_steps`; returns the last call's metrics."""
    # Signal handlers can only be set from the main thread.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    handler = None
    try:
      if main and self.cluster_resolver is not None:
        handler = self._preemption_handler()
      elif main and self.settings.save_on_sigterm:
        signal.signal(signal.SIGTERM, self._on_sigterm)
      return self._run(handler)
    finally:
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._sigterm_received = True

  def _preemption_handler(
      self) -> tf.distribute.experimental.PreemptionCheckpointHandler:
    """Agrees on a step with the other workers once any gets SIGTERM.

    The handler watches SIGTERM itself and publishes "save after the next
    call" to every worker through the coordination service; `save_fn` then
    writes the usual `ckpt-<step>` (into the scratch directory on non-chief
    workers) and `exit_fn` raises `PreemptedError` on every worker.
    """
    manager = self.checkpoint_manager
    if not isinstance(manager, tf.train.CheckpointManager):
      # A non-chief worker saves through `save_fn`; the handler only reads
      # the chief's directory with this manager (it restores the latest
      # checkpoint once more when created, as it does under orbit).
      manager = tf.train.CheckpointManager(manager.checkpoint,
                                           manager.directory, max_to_keep=None)
    config = tf.distribute.experimental.TerminationConfig(
        save_fn=self._save_agreed_step, exit_fn=self._raise_preempted)
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        self.cluster_resolver, manager, termination_config=config)

  def _save_agreed_step(self) -> None:
    step = int(self.global_step.numpy())
    # Every worker skips alike: saving is collective.
    if self._saved_step != step:
      self._save(step)

  def _raise_preempted(self) -> None:
    step = int(self.global_step.numpy())
    raise PreemptedError(
        f"SIGTERM to a worker of this job: every worker stopped at step "
        f"{step} after saving "
        f"{os.path.join(self.checkpoint_manager.directory, f'ckpt-{step}')}; "
        "run the same command on every worker to resume")

  def _run(self, handler) -> dict[str, float]:
    s = self.settings
    step = int(self.global_step.numpy())
    start_step = step
    start_time = time.time()
    last_logged = step
    next_checkpoint = (step // s.checkpoint_steps + 1) * s.checkpoint_steps
    while step < s.total_steps:
      num_steps = min(s.steps_per_loop, s.total_steps - step,
                      next_checkpoint - step)
      loop_start = time.time()
      with self.summary_writer.as_default(step=self.global_step):
        outputs = self.trainer.train(tf.constant(num_steps, tf.int32))
      metrics = {k: float(np.asarray(v)) for k, v in (outputs or {}).items()}
      loop_time = time.time() - loop_start
      step = int(self.global_step.numpy())
      self._check_finite(metrics, step)
      self.last_metrics = metrics
      if (step >= next_checkpoint or step >= s.total_steps or
          self._sigterm_received):
        saved = self._save(step)
        next_checkpoint = (step // s.checkpoint_steps + 1) * s.checkpoint_steps
        if self._sigterm_received:
          raise PreemptedError(
              f"SIGTERM received: stopped at step {step} after saving "
              f"{saved}; run the same command to resume")
      if handler is not None:
        # Saves and raises through `exit_fn` once the agreed step is reached.
        handler.save_checkpoint_if_preempted()
      if s.is_chief:
        images_per_second = num_steps * s.images_per_step / max(loop_time,
                                                                1e-9)
        with self.summary_writer.as_default(step=step):
          for name, value in metrics.items():
            tf.summary.scalar(f"train/{name}", value)
          tf.summary.scalar("train/images_per_second", images_per_second)
          if self.extra_summaries is not None:
            self.extra_summaries(step)
        self.summary_writer.flush()
        if (step - last_logged >= max(1, s.log_every_steps)
            or step >= s.total_steps):
          last_logged = step
          elapsed = time.time() - start_time
          rate = (step - start_step) / max(elapsed, 1e-9)
          eta = (s.total_steps - step) / rate if rate > 0 else math.inf
          shown = " | ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
          self.print_fn(
              f"step {step}/{s.total_steps} | "
              f"{images_per_second:.1f} images/s | "
              f"ETA {_format_duration(eta) if math.isfinite(eta) else '?'} | "
              f"{shown}")
          sys.stdout.flush()
    return self.last_metrics

  def _check_finite(self, metrics: dict[str, float], step: int) -> None:
    for key in self.settings.finite_keys:
      value = metrics.get(key)
      if value is not None and not math.isfinite(value):
        self._raise_non_finite(key, value, step)

  def _raise_non_finite(self, key: str, value: float, step: int) -> None:
    last = self.checkpoint_manager.latest_checkpoint
    raise NonFiniteLossError(
        f"{key} became {value} by step {step}; "
        f"stopped without saving. Last good checkpoint: "
        f"{last or 'none (no checkpoint was written yet)'}")
