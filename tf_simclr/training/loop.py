"""The outer training loop shared by every stage.

Each stage supplies an `orbit.AbstractTrainer` whose `train(num_steps)` runs
`num_steps` compiled steps and returns scalar metrics. This loop drives it to
exactly `total_steps` (the original code overshoots to a multiple of the
checkpoint period, SPEC quirk Q6), saves checkpoints on the period, writes
TensorBoard summaries, prints a progress line and stops on a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import math
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
      call, save a checkpoint of that step and raise `PreemptedError`. Only
      for single-worker runs: workers of a multi-worker run would need to
      agree on the step first.
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
  """

  def __init__(self,
               trainer: orbit.AbstractTrainer,
               global_step: tf.Variable,
               checkpoint_manager: tf.train.CheckpointManager,
               summary_writer,
               settings: LoopSettings,
               extra_summaries: Optional[Callable[[int], None]] = None,
               print_fn: Callable[[str], None] = print):
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
    self.last_metrics: dict[str, float] = {}
    self._sigterm_received = False

  def _save(self, step: int) -> Optional[str]:
    return self.checkpoint_manager.save(checkpoint_number=step)

  def run(self) -> dict[str, float]:
    """Trains until `total_steps`; returns the last call's metrics."""
    install = (self.settings.save_on_sigterm and
               threading.current_thread() is threading.main_thread())
    previous = (signal.signal(signal.SIGTERM, self._on_sigterm) if install
                else None)
    try:
      return self._run()
    finally:
      if install:
        signal.signal(signal.SIGTERM, previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._sigterm_received = True

  def _run(self) -> dict[str, float]:
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
