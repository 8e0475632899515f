"""Two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "deterministic_run.py"
COMMON = ["--train_steps=4", "--checkpoint_steps=2", "--steps_per_loop=2",
          "--train_batch_size=8", "--eval_batch_size=64",
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


@pytest.mark.slow
def test_two_workers_match_one_process_and_only_the_chief_writes(tmp_path):
  workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
  multi_dir, single_dir = tmp_path / "multi", tmp_path / "single"
  processes = []
  for index in range(2):
    config = {"cluster": {"worker": workers},
              "task": {"type": "worker", "index": index}}
    processes.append(subprocess.Popen(
        [sys.executable, str(SCRIPT), "--distribution=multi_worker",
         f"--model_dir={multi_dir}", *COMMON],
        cwd=str(REPO_ROOT), env=_env(config), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=420))
  finally:
    for process in processes:
      process.kill()
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr
    assert "2 replica(s), global batch 8" in stdout

  single = subprocess.run(
      [sys.executable, str(SCRIPT), "--distribution=one_device",
       f"--model_dir={single_dir}", *COMMON],
      cwd=str(REPO_ROOT), env=_env(), capture_output=True, text=True,
      timeout=300)
  assert single.returncode == 0, single.stdout + single.stderr

  assert tf.train.latest_checkpoint(str(multi_dir)).endswith("ckpt-4")
  multi_weights = _model_weights(str(multi_dir))
  single_weights = _model_weights(str(single_dir))
  assert multi_weights.keys() == single_weights.keys()
  assert len(multi_weights) > 50
  for key, value in single_weights.items():
    np.testing.assert_allclose(multi_weights[key], value, atol=1e-4,
                               rtol=1e-4, err_msg=key)
  # Training moved the weights: the comparison is not between two inits.
  initial = tf.train.load_checkpoint(str(multi_dir / "ckpt-2"))
  moved = [k for k, v in multi_weights.items()
           if not np.allclose(initial.get_tensor(k), v)]
  assert moved

  # Only the chief (worker 0) wrote summaries, results and exports; the other
  # worker's scratch checkpoints and export are gone.
  assert not [p for p in multi_dir.iterdir() if p.name.startswith("worker_temp")]
  event_files = list((multi_dir / "train").glob("events.out.tfevents.*"))
  assert len(event_files) == 1
  assert (multi_dir / "result.json").exists()
  assert len([p for p in (multi_dir / "export").iterdir() if p.is_dir()]) == 1
  chief_stdout, worker_stdout = outputs[0][0], outputs[1][0]
  assert "step 4/4" in chief_stdout
  assert "step 4/4" not in worker_stdout


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
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    model_dir = tmp_path / name
    processes = [subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"),
         "--distribution=multi_worker", f"--model_dir={model_dir}", *COMMON,
         "--train_steps=2", "--export_at_end=false", *flags],
        cwd=str(REPO_ROOT),
        env=_env({"cluster": {"worker": workers},
                  "task": {"type": "worker", "index": index}}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in range(2)]
    try:
      outputs = [p.communicate(timeout=420) for p in processes]
    finally:
      for process in processes:
        process.kill()
    for process, (stdout, stderr) in zip(processes, outputs):
      assert process.returncode == 0, f"{name}: {stdout}{stderr}"
      assert "2 replica(s)" in stdout
    result = json.loads((model_dir / "result.json").read_text())
    assert result["global_step"] == 2
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")
    assert not [p for p in model_dir.iterdir()
                if p.name.startswith("worker_temp")]
