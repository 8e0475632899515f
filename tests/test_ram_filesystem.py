"""Every stage on TensorFlow's in-memory ram:// file system, standing in for gs://.

ram:// goes through tf.io.gfile exactly as gs:// does, and shares its
limits: no local path behind it, no atomic directory rename. Data, model
dirs, teacher, label subset file, exports and the hub module all live there;
nothing may reach the local disk.
"""

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import configs
from tf_simclr import paths
from tf_simclr.data import sources
from tf_simclr.export import serving
from tf_simclr.training import experiment

from conftest import REPO_ROOT
from test_experiment import eval_scalars
from test_experiment import tiny_config

CLASSES = ("ant", "bee")
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 4


def _write_bytes(path: str, data: bytes) -> None:
  # ram:// lists a directory only when it was created explicitly.
  tf.io.gfile.makedirs(paths.split(path)[0])
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)


def _read_text(path: str) -> str:
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def _write_image_folder(root: str) -> None:
  """root/{train,test}/{ant,bee}/*.png, 16x16: dark ants, bright bees."""
  rng = np.random.RandomState(0)
  for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
    for label, name in enumerate(CLASSES):
      for i in range(count):
        pixels = rng.randint(0, 96, (16, 16, 3)) + 128 * label
        png = tf.io.encode_png(pixels.astype(np.uint8)).numpy()
        _write_bytes(f"{root}/{split}/{name}/{i:02d}.png", png)


@pytest.fixture
def ram_root():
  root = f"ram://tf_simclr_{uuid.uuid4().hex[:12]}"
  yield root
  paths.remove_tree(root)


@pytest.fixture
def no_local_writes(tmp_path, monkeypatch):
  """An empty working and temp dir, checked to be empty afterwards."""
  cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
  cwd.mkdir()
  tmp.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("TMPDIR", str(tmp))
  monkeypatch.setattr(tempfile, "tempdir", str(tmp))
  yield
  # AutoGraph's own generated sources are TensorFlow's temp files, deleted
  # when the process exits.
  leftovers = [str(p) for d in (cwd, tmp) for p in d.rglob("*")
               if not p.name.startswith("__autograph_generated_file")]
  assert not leftovers, f"written to local disk: {leftovers}"


def _ram_config(root: str, model_dir: str, export_at_end: bool = True,
                **train) -> configs.ExperimentConfig:
  train.setdefault("train_steps", 2)
  cfg = tiny_config(f"{root}/{model_dir}", train_batch_size=8,
                    eval_batch_size=8, **train)
  return dataclasses.replace(
      cfg, data=dataclasses.replace(cfg.data, dataset="image_folder",
                                    data_dir=f"{root}/data", use_blur=False),
      export=dataclasses.replace(cfg.export, export_at_end=export_at_end))


class _Interrupt(Exception):
  pass


def test_stages_exports_and_resume_with_everything_on_ram(ram_root,
                                                          no_local_writes):
  root = ram_root
  _write_image_folder(f"{root}/data")

  # Pretraining interrupted after step 2, then resumed to step 4.
  def crash_after_step_2(line):
    if line.startswith("step 2/"):
      raise _Interrupt()

  pretrain = _ram_config(root, "pretrain", train_steps=4)
  with pytest.raises(_Interrupt):
    experiment.run_experiment(pretrain, print_fn=crash_after_step_2)
  assert tf.train.latest_checkpoint(f"{root}/pretrain") == (
      f"{root}/pretrain/ckpt-2")
  lines = []
  results = experiment.run_experiment(pretrain, print_fn=lines.append)
  assert f"resumed from {root}/pretrain/ckpt-2 at step 2" in lines
  assert [l.split(" |")[0] for l in lines if l.startswith("step ")] == [
      "step 4/4"]
  assert results["global_step"] == 4
  assert results["serving_export"] == f"{root}/pretrain/export/4"
  assert json.loads(_read_text(f"{root}/pretrain/result_4.json"))[
      "global_step"] == 4
  saved = configs.ExperimentConfig.from_json(
      _read_text(f"{root}/pretrain/config.json"))
  assert saved.head.num_classes == 2
  assert tf.io.gfile.glob(f"{root}/pretrain/train/events.out.tfevents.*")
  assert eval_scalars(f"{root}/pretrain/eval")["eval/label_top_1_accuracy"] == (
      4, pytest.approx(results["label_top_1_accuracy"], abs=1e-7))
  assert serving.list_versions(f"{root}/pretrain/export") == [4]
  # No staging directory is left behind next to the version.
  assert tf.io.gfile.listdir(f"{root}/pretrain/export") == ["4"]
  loaded = tf.saved_model.load(results["serving_export"])
  png = tf.io.read_file(f"{root}/data/test/bee/00.png")
  out = loaded.signatures["serving_default"](image_bytes=tf.stack([png]))
  assert out["probabilities"].shape == (1, 2)

  # Fine-tuning from the ram:// checkpoint on a ram:// label subset file.
  _write_bytes(f"{root}/subset.txt",
               b"train/ant/00.png\ntrain/ant/01.png\n"
               b"train/bee/00.png\ntrain/bee/01.png\n")
  lines = []
  finetuned = experiment.run_experiment(
      _ram_config(root, "finetune", train_mode="finetune",
                  checkpoint=f"{root}/pretrain",
                  label_subset_file=f"{root}/subset.txt",
                  export_at_end=False),
      print_fn=lines.append)
  assert any(l.startswith(f"warm start: tf_simclr checkpoint "
                          f"{root}/pretrain/ckpt-4 ") for l in lines), lines
  assert any(f"label_subset_file={root}/subset.txt): 4 of 16" in l
             for l in lines), lines
  assert finetuned["global_step"] == 2

  # Distillation from the ram:// teacher; the teacher's own accuracy on the
  # eval split matches the fine-tuned run's.
  distilled = experiment.run_experiment(
      _ram_config(root, "distill", train_mode="distill",
                  teacher_checkpoint=f"{root}/finetune", export_at_end=False),
      print_fn=lambda _: None)
  assert distilled["global_step"] == 2
  assert distilled["teacher_label_top_1_accuracy"] == pytest.approx(
      finetuned["label_top_1_accuracy"])

  # --mode=export of the ram:// checkpoint, with a hub module.
  cfg = _ram_config(root, "exported", mode="export",
                    checkpoint=f"{root}/finetune/ckpt-2")
  cfg = dataclasses.replace(cfg, export=dataclasses.replace(
      cfg.export, hub_export_dir=f"{root}/hub/simclr"))
  exported = experiment.run_experiment(cfg, print_fn=lambda _: None)
  assert exported["serving_export"] == f"{root}/exported/export/2"
  assert exported["hub_export"] == f"{root}/hub/simclr"
  assert sorted(tf.io.gfile.listdir(f"{root}/hub")) == [
      "simclr", "simclr.md", "simclr.tar.gz"]
  assert "SimCLR resnet-18 image feature vectors trained on image_folder" in (
      _read_text(f"{root}/hub/simclr.md"))
  with tf.io.gfile.GFile(f"{root}/hub/simclr.tar.gz", "rb") as f:
    with tarfile.open(fileobj=io.BytesIO(f.read())) as tar:
      names = tar.getnames()
  assert names == sorted(names) and set(names) == set(
      paths.list_files(f"{root}/hub/simclr"))
  assert {"saved_model.pb", "variables/variables.index"} <= set(names)
  module = tf.saved_model.load(f"{root}/hub/simclr")
  features = module(tf.zeros([2, 16, 16, 3]), False)
  assert features.shape == (2, 64)


def test_image_folder_on_ram_matches_the_same_folder_on_disk(ram_root,
                                                             tmp_path):
  _write_image_folder(f"{ram_root}/data")
  local = tmp_path / "data"
  for name in paths.list_files(f"{ram_root}/data"):
    tf.io.gfile.makedirs(str((local / name).parent))
    tf.io.gfile.copy(f"{ram_root}/data/{name}", str(local / name))
  on_ram = sources.get_source("image_folder", f"{ram_root}/data")
  on_disk = sources.get_source("image_folder", str(local))
  assert on_ram.class_names == on_disk.class_names == CLASSES
  for split in ("train", "test"):
    ram_ids, ram_labels = on_ram.example_index(split)
    disk_ids, disk_labels = on_disk.example_index(split)
    assert ram_ids == disk_ids and len(ram_ids) == 2 * (
        TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS)
    np.testing.assert_array_equal(ram_labels, disk_labels)
  ram_images = [e["image"] for e in on_ram.make_dataset("test")
                .as_numpy_iterator()]
  disk_images = [e["image"] for e in on_disk.make_dataset("test")
                 .as_numpy_iterator()]
  np.testing.assert_array_equal(np.stack(ram_images), np.stack(disk_images))


def test_original_code_saved_model_on_ram(r18_fixture_dir, ram_root):
  from tf_simclr.models import loading
  local = str(r18_fixture_dir / "saved_model")
  remote = f"{ram_root}/r18/saved_model"
  for name in paths.list_files(local):
    tf.io.gfile.makedirs(paths.split(f"{remote}/{name}")[0])
    tf.io.gfile.copy(f"{local}/{name}", f"{remote}/{name}")
  assert loading.is_saved_model_dir(remote)
  # ram:// calls variables/variables a directory (variables.index exists).
  assert loading.resolve_checkpoint(remote) == (
      f"{remote}/variables/variables")
  model = loading.load(remote)
  io_arrays = np.load(r18_fixture_dir / "io.npz")
  outputs = model(io_arrays["inputs"], training=False)
  np.testing.assert_allclose(outputs["logits_sup"].numpy(),
                             io_arrays["logits_sup"], atol=1e-4)


def test_local_path_and_split_keep_uri_schemes():
  assert paths.local_path("/a/b") == "/a/b"
  assert paths.local_path("rel/b") == "rel/b"
  assert paths.local_path("file:///a/b") == "/a/b"
  assert paths.local_path("gs://bucket/a") is None
  assert paths.local_path("ram://a") is None
  assert paths.split("ram://hub") == ("ram://", "hub")
  assert paths.split("gs://bucket/runs/1/") == ("gs://bucket/runs", "1")
  assert paths.split("file:///tmp/x") == ("file:///tmp", "x")
  assert paths.split("/tmp/x") == ("/tmp", "x")
  assert paths.split("x") == ("", "x")


def test_cli_runs_with_file_uris(tmp_path):
  model_dir = f"file://{tmp_path}/run"
  hub_dir = f"file://{tmp_path}/hub/simclr"
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / "run.py"), f"--model_dir={model_dir}",
       f"--hub_export_dir={hub_dir}", "--train_steps=2", "--warmup_epochs=0",
       "--train_batch_size=16", "--eval_batch_size=64",
       "--width_multiplier=0.0625", "--image_size=16", "--proj_out_dim=16",
       "--distribution=one_device", "--nojit_compile"],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"exported TF Serving model to {model_dir}/export/2" in result.stdout
  assert f"exported TF Hub module to {hub_dir}" in result.stdout
  assert sorted(os.listdir(tmp_path)) == ["hub", "run"]  # No "file:" folder.
  assert (tmp_path / "run" / "export" / "2" / "saved_model.pb").exists()
  assert (tmp_path / "run" / "result_2.json").exists()
  assert sorted(os.listdir(tmp_path / "hub")) == [
      "simclr", "simclr.md", "simclr.tar.gz"]
