"""Surviving faults: NaN losses, unusable model_dir, mismatched resumes, kills."""

import dataclasses
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.errors import NonFiniteLossError
from tf_simclr.training import experiment
from tf_simclr.training import pretrain

from conftest import REPO_ROOT
from test_experiment import tiny_config


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(
    tmp_path, monkeypatch):
  original = pretrain.PretrainTrainer._loss_and_gradients

  def poisoned(self, images, labels, extra_negatives=None):
    # From the fourth step on, the batch is NaN: a synthetic bad input.
    poison = tf.where(self.optimizer.iterations >= 3,
                      tf.constant(np.nan, tf.float32), 1.0)
    images = images * poison
    return original(self, images, labels, extra_negatives)

  monkeypatch.setattr(pretrain.PretrainTrainer, "_loss_and_gradients",
                      poisoned)
  cfg = tiny_config(tmp_path, train_steps=6, checkpoint_steps=2,
                    steps_per_loop=1)
  with pytest.raises(NonFiniteLossError) as error:
    experiment.run_experiment(cfg, print_fn=lambda _: None)
  message = str(error.value)
  # The loss itself stays finite here (ReLU maps NaN to 0); the gradient norm
  # gives the poisoning away.
  assert "became nan by step 4" in message
  assert str(tmp_path / "ckpt-2") in message
  # The last good checkpoint is kept and restorable; nothing later was saved.
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
  reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-2"))
  assert all(np.all(np.isfinite(reader.get_tensor(k)))
             for k in reader.get_variable_to_shape_map()
             if k.startswith("model/"))


def test_unwritable_model_dir_fails_before_training(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  cfg = tiny_config(blocker / "model")
  with pytest.raises(ValueError, match="model_dir .* is not writable"):
    experiment.run_experiment(cfg, print_fn=lambda _: None)


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
  usage = namedtuple("usage", "total used free")
  monkeypatch.setattr(shutil, "disk_usage",
                      lambda path: usage(10**9, 10**9 - 4096, 4096))
  lines = []
  with pytest.raises(ValueError, match=r"0\.0 MiB free but two checkpoints"):
    experiment.run_experiment(tiny_config(tmp_path), print_fn=lines.append)
  assert not any(line.startswith("step ") for line in lines)
  assert tf.train.latest_checkpoint(str(tmp_path)) is None


def test_resuming_another_architecture_is_an_error(tmp_path):
  experiment.run_experiment(tiny_config(tmp_path, train_steps=2,
                                        mode="train"),
                            print_fn=lambda _: None)
  wider = tiny_config(tmp_path, train_steps=4, mode="train")
  wider = dataclasses.replace(wider, model=dataclasses.replace(
      wider.model, width_multiplier=0.25))
  with pytest.raises(ValueError, match="ckpt-2' does not match this run's "
                     "model and optimizer, so the run cannot resume"):
    experiment.run_experiment(wider, print_fn=lambda _: None)


KILL_ARGS = ["--train_steps=14", "--checkpoint_steps=3", "--steps_per_loop=1",
             "--log_every_steps=1", "--train_batch_size=32",
             "--width_multiplier=0.125", "--proj_out_dim=16",
             "--warmup_epochs=0", "--mode=train", "--nojit_compile",
             "--export_at_end=false", "--distribution=one_device"]


def _model_tensors(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith(("model/", "optimizer/"))}


def _run_until_killed(model_dir, kill_after_step, deadline_seconds=240):
  """Starts run.py and SIGKILLs it once it reports `kill_after_step`."""
  process = subprocess.Popen(
      [sys.executable, str(REPO_ROOT / "run.py"), f"--model_dir={model_dir}",
       *KILL_ARGS], cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + deadline_seconds
  finished = False
  for line in process.stdout:
    if line.startswith(f"step {kill_after_step}/"):
      break
    if line.startswith("training finished") or time.time() > deadline:
      finished = True
      break
  process.send_signal(signal.SIGKILL)
  process.wait()
  return finished


@pytest.mark.slow
def test_five_sigkills_at_random_steps_end_like_an_uninterrupted_run(
    tmp_path):
  reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
  # The uninterrupted run goes on beside the killed ones (CI time); results
  # do not depend on timing.
  reference = subprocess.Popen(
      [sys.executable, str(REPO_ROOT / "run.py"),
       f"--model_dir={reference_dir}", *KILL_ARGS],
      cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)
  # Five kills at increasing, distinct steps; none on a checkpoint boundary
  # alone, so most restarts replay steps after the last checkpoint.
  kill_steps = sorted(random.Random(8).sample(range(1, 14), 5))
  steps_at_restart = []
  for kill_step in kill_steps:
    finished = _run_until_killed(killed_dir, kill_step)
    assert not finished, f"run ended before step {kill_step}"
    latest = tf.train.latest_checkpoint(str(killed_dir))
    steps_at_restart.append(
        int(latest.rsplit("-", 1)[1]) if latest else 0)
    for prefix in tf.train.get_checkpoint_state(
        str(killed_dir)).all_model_checkpoint_paths if latest else []:
      tf.train.load_checkpoint(prefix)  # Never half-written.
  final = subprocess.run(
      [sys.executable, str(REPO_ROOT / "run.py"), f"--model_dir={killed_dir}",
       *KILL_ARGS], cwd=str(REPO_ROOT), capture_output=True, text=True,
      timeout=300)
  assert final.returncode == 0, final.stderr
  _, reference_stderr = reference.communicate(timeout=300)
  assert reference.returncode == 0, reference_stderr
  assert tf.train.latest_checkpoint(str(killed_dir)).endswith("ckpt-14")
  assert steps_at_restart == sorted(steps_at_restart)
  expected, actual = _model_tensors(str(reference_dir)), _model_tensors(
      str(killed_dir))
  assert expected.keys() == actual.keys()
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, rtol=1e-6, atol=1e-6,
                               err_msg=key)


def test_sigterm_saves_the_current_step_and_exits(tmp_path):
  args = [f"--model_dir={tmp_path}", "--train_steps=40",
          "--checkpoint_steps=100", "--steps_per_loop=1",
          "--log_every_steps=1", "--train_batch_size=32",
          "--width_multiplier=0.125", "--proj_out_dim=16",
          "--warmup_epochs=0", "--mode=train", "--export_at_end=false"]
  process = subprocess.Popen(
      [sys.executable, str(REPO_ROOT / "run.py"), *args], cwd=str(REPO_ROOT),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in process.stdout:
    if line.startswith("step 3/"):
      break
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143, stderr
  assert "Traceback" not in stderr
  assert "preempted: SIGTERM received: stopped at step" in stderr
  # Saved off the checkpoint period (every 100 steps), at the step it stopped.
  latest = tf.train.latest_checkpoint(str(tmp_path))
  step = int(latest.rsplit("-", 1)[1])
  assert 3 <= step < 40
  assert f"stopped at step {step} " in stderr
