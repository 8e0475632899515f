"""Two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "deterministic_run.py"
TRAIN_STEPS = 6
COMMON = [f"--train_steps={TRAIN_STEPS}", "--checkpoint_steps=2",
          "--steps_per_loop=2", "--train_batch_size=8", "--eval_batch_size=64",
          "--width_multiplier=0.125", "--proj_out_dim=16",
          "--warmup_epochs=0", "--image_size=16", "--nojit_compile",
          "--mode=train_then_eval", "--noknn_eval",
          "--probe_label_fractions="]


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _env(tf_config=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TF_CONFIG", None)
  if tf_config is not None:
    env["TF_CONFIG"] = json.dumps(tf_config)
  return env


def _model_weights(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith("model/") and "OPTIMIZER_SLOT" not in k}


def _start_workers(model_dir, flags, script=SCRIPT):
  workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
  return [subprocess.Popen(
      [sys.executable, str(script), "--distribution=multi_worker",
       f"--model_dir={model_dir}", *flags],
      cwd=str(REPO_ROOT),
      env=_env({"cluster": {"worker": workers},
                "task": {"type": "worker", "index": index}}),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for index in range(2)]


def _finish(processes, timeout=420):
  try:
    return [p.communicate(timeout=timeout) for p in processes]
  finally:
    for process in processes:
      process.kill()


def _scratch_dirs(model_dir):
  # Ours (worker_temp_*) and the ones tf.distribute's own managers would use.
  return [p for p in model_dir.iterdir()
          if p.name.startswith(("worker_temp", "workertemp"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """Two workers and a one-process twin, run once for the whole module."""
  root = tmp_path_factory.mktemp("uninterrupted")
  multi_dir, single_dir = root / "multi", root / "single"
  # The twin runs alongside the workers (CI time); results do not depend on
  # timing.
  single = subprocess.Popen(
      [sys.executable, str(SCRIPT), "--distribution=one_device",
       f"--model_dir={single_dir}", *COMMON],
      cwd=str(REPO_ROOT), env=_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  processes = _start_workers(multi_dir, COMMON)
  outputs = _finish(processes)
  single_stdout, single_stderr = _finish([single])[0]
  assert single.returncode == 0, single_stdout + single_stderr
  return {"multi_dir": multi_dir, "single_dir": single_dir,
          "returncodes": [p.returncode for p in processes],
          "outputs": outputs}


def _assert_weights_close(actual_dir, expected_dir):
  actual = _model_weights(str(actual_dir))
  expected = _model_weights(str(expected_dir))
  assert actual.keys() == expected.keys()
  assert len(actual) > 50
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, atol=1e-4, rtol=1e-4,
                               err_msg=key)
  return actual


@pytest.mark.slow
def test_two_workers_match_one_process_and_only_the_chief_writes(
    uninterrupted):
  multi_dir = uninterrupted["multi_dir"]
  outputs = uninterrupted["outputs"]
  for returncode, (stdout, stderr) in zip(uninterrupted["returncodes"],
                                          outputs):
    assert returncode == 0, stdout + stderr
    assert "Traceback" not in stderr
    assert "2 replica(s), global batch 8" in stdout

  assert tf.train.latest_checkpoint(str(multi_dir)).endswith(
      f"ckpt-{TRAIN_STEPS}")
  multi_weights = _assert_weights_close(multi_dir,
                                        uninterrupted["single_dir"])
  # Training moved the weights: the comparison is not between two inits.
  initial = tf.train.load_checkpoint(str(multi_dir / "ckpt-2"))
  moved = [k for k, v in multi_weights.items()
           if not np.allclose(initial.get_tensor(k), v)]
  assert moved

  # Only the chief (worker 0) wrote summaries, results and exports; the other
  # worker's scratch checkpoints and export are gone.
  assert not _scratch_dirs(multi_dir)
  event_files = list((multi_dir / "train").glob("events.out.tfevents.*"))
  assert len(event_files) == 1
  assert (multi_dir / "result.json").exists()
  assert len([p for p in (multi_dir / "export").iterdir() if p.is_dir()]) == 1
  chief_stdout, worker_stdout = outputs[0][0], outputs[1][0]
  assert f"step {TRAIN_STEPS}/{TRAIN_STEPS}" in chief_stdout
  assert f"step {TRAIN_STEPS}/{TRAIN_STEPS}" not in worker_stdout


@pytest.mark.slow
def test_two_workers_run_finetune_and_distill_stages(tmp_path):
  """The later stages under MultiWorkerMirroredStrategy on the real (sharded)
  pipeline: both workers exit cleanly and only the chief writes results."""
  single = subprocess.run(
      [sys.executable, str(REPO_ROOT / "run.py"), "--distribution=one_device",
       f"--model_dir={tmp_path / 'pre'}", *COMMON, "--train_steps=2",
       "--export_at_end=false"],
      cwd=str(REPO_ROOT), env=_env(), capture_output=True, text=True,
      timeout=300)
  assert single.returncode == 0, single.stderr
  stages = [
      ("finetune", ["--train_mode=finetune", f"--checkpoint={tmp_path / 'pre'}",
                    "--label_fraction=0.1"]),
      ("distill", ["--train_mode=distill",
                   f"--teacher_checkpoint={tmp_path / 'finetune'}"]),
  ]
  for name, flags in stages:
    model_dir = tmp_path / name
    processes = _start_workers(
        model_dir, [*COMMON, "--train_steps=2", "--export_at_end=false",
                    *flags], script=REPO_ROOT / "run.py")
    outputs = _finish(processes)
    for process, (stdout, stderr) in zip(processes, outputs):
      assert process.returncode == 0, f"{name}: {stdout}{stderr}"
      assert "2 replica(s)" in stdout
    result = json.loads((model_dir / "result.json").read_text())
    assert result["global_step"] == 2
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")
    assert not _scratch_dirs(model_dir)



@pytest.mark.slow
def test_sigterm_to_one_worker_saves_one_step_on_all_and_resumes(
    tmp_path, uninterrupted):
  # The uninterrupted twin's flags, except that no periodic checkpoint falls
  # inside the run and every step is its own call.
  flags = [*COMMON, "--checkpoint_steps=1000", "--steps_per_loop=1",
           "--log_every_steps=1", "--mode=train", "--export_at_end=false"]
  processes = _start_workers(tmp_path, flags)
  chief_lines = []
  for line in processes[0].stdout:
    chief_lines.append(line)
    if line.startswith("step 2/"):
      break
  # Worker 1, not the chief, gets the notice: the chief must learn of it.
  processes[1].send_signal(signal.SIGTERM)
  outputs = _finish(processes)
  stopped_at = []
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 143, "".join(chief_lines) + stdout + stderr
    assert "Traceback" not in stderr
    match = re.search(r"preempted: SIGTERM to a worker of this job: every "
                      r"worker stopped at step (\d+) ", stderr)
    assert match, stderr
    stopped_at.append(int(match.group(1)))
  step = stopped_at[0]
  assert stopped_at == [step, step]
  # Saved after the call following the notice, before the end of the run.
  assert 2 < step < TRAIN_STEPS
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{step}")
  assert not _scratch_dirs(tmp_path)

  resumed = _start_workers(tmp_path, flags)
  outputs = _finish(resumed)
  for process, (stdout, stderr) in zip(resumed, outputs):
    assert process.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr
    assert f"ckpt-{step} at step {step}" in stdout
  assert f"step {TRAIN_STEPS}/{TRAIN_STEPS}" in outputs[0][0]
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith(
      f"ckpt-{TRAIN_STEPS}")
  _assert_weights_close(tmp_path, uninterrupted["multi_dir"])
