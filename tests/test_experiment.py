"""End-to-end pretraining runs: train/eval/resume, 2 replicas, bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import configs
from tf_simclr.data import pipelines
from tf_simclr.training import evaluation
from tf_simclr.training import experiment

from conftest import REPO_ROOT


def tiny_config(model_dir, **train_overrides) -> configs.ExperimentConfig:
  # One replica keeps these runs fast; test_two_replica_run covers two.
  train = dict(model_dir=str(model_dir), distribution="one_device",
               train_batch_size=16,
               eval_batch_size=64, train_steps=4, checkpoint_steps=2,
               steps_per_loop=2, jit_compile=False, train_epochs=100.0,
               knn_eval=False, probe_label_fractions=())
  train.update(train_overrides)
  return configs.ExperimentConfig(
      model=configs.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                stem=configs.STEM_CIFAR),
      head=configs.HeadConfig(proj_out_dim=16),
      loss=configs.LossConfig(temperature=0.1),
      data=configs.DataConfig(dataset="digits", image_size=16,
                              color_jitter_strength=0.5, use_blur=True,
                              min_crop_area=0.08, finetune_min_crop_area=0.08,
                              horizontal_flip=True),
      optimizer=configs.OptimizerConfig(warmup_epochs=0.0, weight_decay=1e-6),
      train=configs.TrainConfig(**train))


def _weights(model_dir):
  """Model, momentum-encoder and queue tensors of the latest checkpoint."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith(("model/", "momentum_encoder/", "negative_queue/"))
          and "OPTIMIZER_SLOT" not in k}


def test_train_then_eval_writes_results_config_and_checkpoints(tmp_path):
  lines = []
  results = experiment.run_experiment(tiny_config(tmp_path),
                                      print_fn=lines.append)
  assert results["global_step"] == 4
  assert 0.0 <= results["label_top_1_accuracy"] <= 1.0
  assert results["label_top_5_accuracy"] >= results["label_top_1_accuracy"]
  assert results["eval_examples"] == 359  # The whole digits test split.
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["global_step"] == 4
  assert (tmp_path / "result_4.json").exists()
  config = configs.ExperimentConfig.from_json(
      (tmp_path / "config.json").read_text())
  assert config.head.num_classes == 10  # filled in from the data source
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
  progress = [l for l in lines if l.startswith("step ")]
  assert progress and "images/s" in progress[-1] and "ETA" in progress[-1]
  assert any(l.startswith("final: ") for l in lines)
  events = list((tmp_path / "train").glob("events.out.tfevents.*"))
  assert events
  # The eval results are also TensorBoard scalars at the global step.
  scalars = eval_scalars(str(tmp_path / "eval"))
  assert scalars["eval/label_top_1_accuracy"] == (
      4, pytest.approx(saved["label_top_1_accuracy"], abs=1e-7))
  assert scalars["eval/label_top_5_accuracy"] == (
      4, pytest.approx(saved["label_top_5_accuracy"], abs=1e-7))
  assert scalars["eval/eval_examples"] == (4, 359)
  assert "eval/global_step" not in scalars


def eval_scalars(directory) -> dict:
  """{tag: (step, value)} of the scalar summaries in `directory`'s events."""
  scalars = {}
  for path in tf.io.gfile.glob(f"{directory}/events.out.tfevents.*"):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        scalars[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
  return scalars


def test_pretrain_image_size_shrinks_only_the_pretraining_views(
    tmp_path, monkeypatch):
  built = {}
  for name in ("build_pretrain_dataset", "build_eval_dataset"):
    original = getattr(pipelines, name)

    def spy(*args, _name=name, _original=original, **kwargs):
      dataset = _original(*args, **kwargs)
      built.setdefault(_name, []).append(dataset.element_spec)
      return dataset

    monkeypatch.setattr(pipelines, name, spy)
  cfg = tiny_config(tmp_path)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(
      cfg.data, pretrain_image_size=12))
  results = experiment.run_experiment(cfg, print_fn=lambda _: None)
  assert results["global_step"] == 4
  # Training views at 12 px (the view-grid preview is built the same way);
  # the encoder and the evaluation stay at the 16-px image size.
  assert {tuple(spec["view1"].shape[1:]) for spec in
          built["build_pretrain_dataset"]} == {(12, 12, 3)}
  assert {tuple(spec["image"].shape[1:]) for spec in
          built["build_eval_dataset"]} == {(16, 16, 3)}


class _Interrupt(Exception):
  pass


# Resume without a memory bank is covered end to end by
# test_faults.py::test_five_sigkills_at_random_steps_end_like_an_uninterrupted_run;
# the memory bank adds the queue, its pointer and the momentum encoder.
@pytest.mark.parametrize("memory_size", [24])
def test_resume_continues_at_the_exact_step_and_matches_uninterrupted(
    tmp_path, memory_size):
  def config(model_dir):
    cfg = tiny_config(model_dir, mode="train")
    return dataclasses.replace(cfg, loss=dataclasses.replace(
        cfg.loss, memory_size=memory_size, memory_momentum=0.9))

  straight = tmp_path / "straight"
  experiment.run_experiment(config(straight), print_fn=lambda _: 0)

  def crash_after_step_2(line):
    if line.startswith("step 2/"):
      raise _Interrupt()

  split = tmp_path / "split"
  with pytest.raises(_Interrupt):
    experiment.run_experiment(config(split), print_fn=crash_after_step_2)
  assert tf.train.latest_checkpoint(str(split)).endswith("ckpt-2")
  lines = []
  experiment.run_experiment(config(split), print_fn=lines.append)
  assert any("resumed from" in l and "step 2" in l for l in lines)
  assert tf.train.latest_checkpoint(str(split)).endswith("ckpt-4")
  a, b = _weights(str(straight)), _weights(str(split))
  assert a.keys() == b.keys()
  queue_keys = [k for k in a if k.startswith("negative_queue/")]
  assert bool(queue_keys) == bool(memory_size)
  for key in queue_keys:
    if key.startswith("negative_queue/keys"):
      # 4 steps x 16 keys wrapped around 24 rows: every row was written.
      assert a[key].shape == (24, 16) and np.all(
          np.abs(np.linalg.norm(a[key], axis=1) - 1) < 1e-5)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=key)


# With the memory bank the two-replica run exercises everything the plain run
# does (sync BN, gathered NT-Xent) plus the all-gathered queue.
@pytest.mark.parametrize("memory_size", [24])
def test_two_replica_run(tmp_path, two_cpu_strategy, memory_size):
  cfg = tiny_config(tmp_path, train_steps=2, knn_eval=True,
                    probe_label_fractions=(0.1,))
  cfg = dataclasses.replace(
      cfg, model=dataclasses.replace(cfg.model, global_bn=True),
      loss=dataclasses.replace(cfg.loss, memory_size=memory_size))
  lines = []
  results = experiment.run_experiment(cfg, print_fn=lines.append,
                                      strategy=two_cpu_strategy)
  assert results["global_step"] == 2
  assert np.isfinite(results["train_total_loss"])
  # Eval and k-NN features ran on both replicas over padded full batches.
  assert results["eval_examples"] == 359
  assert 0.0 < results["knn_top_1_accuracy"] <= 1.0
  # One input pipeline keeps the source's order, so the raw-pixel baseline
  # is matched to the gathered features; raw digits pixels probe well.
  assert results["probe_0.1_num_labels"] == 144
  assert results["probe_0.1_raw_pixels_top_1"] > 0.8
  summary = [l for l in lines if l.startswith("summary: ")]
  assert summary == [f"summary: {evaluation.probe_summary(results)}"]


def test_probe_summary_marks_a_missing_baseline():
  results = {"probe_0.1_num_labels": 143, "probe_0.1_pretrained_top_1": 0.9,
             "probe_0.1_random_init_top_1": 0.5, "knn_top_1_accuracy": 0.8}
  assert evaluation.probe_summary(results) == (
      "linear probe top-1, pretrained / random init / raw pixels: "
      "10% labels (143) 0.900 / 0.500 / n/a | k-NN top-1 0.800")
  assert evaluation.probe_summary({"eval_examples": 3}) is None


def test_rejects_batch_not_divisible_by_replicas(tmp_path, two_cpu_strategy):
  with pytest.raises(ValueError, match="divisible by the 2 replicas"):
    experiment.run_experiment(tiny_config(tmp_path, train_batch_size=15),
                              strategy=two_cpu_strategy)


def test_eval_mode_without_checkpoint_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="no checkpoint"):
    experiment.run_experiment(tiny_config(tmp_path, mode="eval"),
                              print_fn=lambda _: 0)


def _run_cli(*args, timeout=240):
  return subprocess.run(
      [sys.executable, str(REPO_ROOT / "run.py"), *args],
      cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--dataset=no_such_dataset_xyz"], "no_such_dataset_xyz"),
    (["--dataset=image_folder", "--data_dir=/nonexistent/folder"],
     "/nonexistent/folder"),
    (["--resnet_depth=19"], "resnet_depth"),
    (["--fine_tune_after_block=2"], "fine_tune_after_block"),
])
def test_cli_bad_input_gives_one_clear_line(tmp_path, args, message):
  result = _run_cli(f"--model_dir={tmp_path}", *args)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  error_lines = [l for l in result.stderr.splitlines()
                 if l.startswith("error: ")]
  assert len(error_lines) == 1 and message in error_lines[0], result.stderr


def _image_folder(root, corrupt_files=()):
  """Two classes of four PNGs per split; `corrupt_files` are truncated JPEGs."""
  import io
  from PIL import Image
  for split in ("train", "test"):
    for label in ("a", "b"):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(
            folder / f"{i}.png")
  jpeg = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(
      0, 255, (16, 16, 3), np.uint8)).save(jpeg, format="JPEG")
  for relpath in corrupt_files:
    # A valid JPEG header: only decoding finds the file cut short.
    (root / relpath).write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
  return root


def test_cli_names_a_truncated_jpeg_and_skips_it_with_the_flag(tmp_path):
  root = _image_folder(tmp_path / "data", ["train/a/broken.jpg"])
  common = [f"--dataset=image_folder", f"--data_dir={root}",
            "--train_steps=1", "--train_batch_size=4", "--eval_batch_size=4",
            "--width_multiplier=0.0625", "--warmup_epochs=0",
            "--export_at_end=false"]
  result = _run_cli(f"--model_dir={tmp_path / 'm1'}", *common)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  error_lines = [l for l in result.stderr.splitlines()
                 if l.startswith("error: ")]
  assert len(error_lines) == 1, result.stderr
  assert "train/a/broken.jpg" in error_lines[0]
  assert "--skip_corrupt_images" in error_lines[0]


def test_corrupt_eval_image_is_named_or_skipped_and_counted(tmp_path):
  import run
  root = _image_folder(tmp_path / "data", ["train/a/cut.jpg",
                                           "test/b/cut.jpg"])
  cfg = tiny_config(tmp_path / "model", train_steps=2, train_batch_size=4,
                    eval_batch_size=4)
  cfg = dataclasses.replace(
      cfg, data=dataclasses.replace(cfg.data, dataset="image_folder",
                                    data_dir=str(root),
                                    skip_corrupt_images=True),
      export=dataclasses.replace(cfg.export, export_at_end=False))
  lines = []
  results = experiment.run_experiment(cfg, print_fn=lines.append)
  assert results["skipped_corrupt_images"] == 2  # distinct files, not visits
  assert any(l.startswith("skipped 2 undecodable image file(s): ")
             for l in lines)
  # Without the flag, evaluation stops on the test file; the checkpoint of
  # the finished training stays.
  cfg = dataclasses.replace(
      cfg, data=dataclasses.replace(cfg.data, skip_corrupt_images=False),
      train=dataclasses.replace(cfg.train, mode="eval"))
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    experiment.run_experiment(cfg, print_fn=lambda _: 0)
  line = run.error_line(raised.value)
  assert "\n" not in line and "test/b/cut.jpg" in line, line
  assert tf.train.latest_checkpoint(str(tmp_path / "model")).endswith("ckpt-2")


@pytest.mark.parametrize("error", [
    tf.errors.InvalidArgumentError(None, None, ""),
    tf.errors.UnknownError(None, None, "\n\n"),
    ValueError(),
])
def test_error_line_of_an_empty_message_is_one_line(error):
  import run
  name = type(error).__name__
  assert run.error_line(error) == f"error: {name}"


def test_error_line_skips_tensorflow_context_lines():
  import run
  error = tf.errors.ResourceExhaustedError(
      None, None, "Graph execution error:\n\nDetected at node x defined at "
      "(most recent call last):\n\nOOM when allocating tensor\n\t [[{{node "
      "x}}]] [Op:__inference_step_1]")
  assert run.error_line(error) == (
      "error: ResourceExhaustedError: OOM when allocating tensor")


def test_schedule_minimum_steps_and_warm_up_clipping():
  cfg = tiny_config("/unused", train_steps=0, train_epochs=30.0,
                    train_batch_size=0, min_train_steps=300)
  cfg = experiment.resolve_batch_size(cfg, 143, replicas=1)
  assert cfg.train.train_batch_size == 64
  assert experiment.compute_schedule(cfg, 143).total_steps == 300
  longer = dataclasses.replace(cfg, train=dataclasses.replace(
      cfg.train, train_epochs=200.0))
  assert experiment.compute_schedule(longer, 143).total_steps == 447
  explicit = dataclasses.replace(cfg, train=dataclasses.replace(
      cfg.train, train_steps=10))
  assert experiment.compute_schedule(explicit, 143).total_steps == 10
  lines = []
  warm = dataclasses.replace(
      explicit, optimizer=dataclasses.replace(cfg.optimizer,
                                              warmup_epochs=10.0))
  schedule = experiment.compute_schedule(warm, 143, lines.append)
  assert (schedule.total_steps, schedule.warmup_steps) == (10, 9)
  assert lines == ["warning: warmup_epochs=10.0 gives 22 warm-up steps for a "
                   "10-step run; warming up for 9 instead"]


def test_default_warm_up_longer_than_a_3_step_run_is_clipped(tmp_path):
  from absl import flags as absl_flags
  import flags as tf_simclr_flags
  tf_simclr_flags.define_flags()
  values = absl_flags.FLAGS
  values.unparse_flags()
  try:
    values(["run.py", "--train_steps=3", "--train_batch_size=16",
            "--width_multiplier=0.0625", "--proj_out_dim=16", "--mode=train",
            "--export_at_end=false", "--distribution=one_device",
            f"--model_dir={tmp_path}"])
    cfg = tf_simclr_flags.config_from_flags(values)
  finally:
    values.unparse_flags()
  assert cfg.optimizer.warmup_epochs == 2.0  # the default: 179 steps here
  lines = []
  experiment.run_experiment(cfg, print_fn=lines.append)
  warnings = [l for l in lines if l.startswith("warning: ")]
  assert len(warnings) == 1 and "warming up for 2 instead" in warnings[0]
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")


def test_export_at_end_and_from_checkpoint(tmp_path):
  from tf_simclr.export import serving
  run_dir = tmp_path / "run"
  cfg = tiny_config(run_dir, train_steps=2)
  results = experiment.run_experiment(cfg, print_fn=lambda _: 0)
  assert results["serving_export"] == str(run_dir / "export" / "2")
  assert serving.read_metadata(results["serving_export"])["global_step"] == 2
  # --mode=export rebuilds the architecture from the run's config.json even
  # when the current flags describe another model.
  other = dataclasses.replace(
      tiny_config(tmp_path / "exported", mode="export",
                  checkpoint=str(run_dir)),
      model=configs.ModelConfig(resnet_depth=50, width_multiplier=2.0))
  exported = experiment.run_experiment(other, print_fn=lambda _: 0)
  assert exported["serving_export"] == str(tmp_path / "exported" / "export" /
                                           "2")
  loaded = tf.saved_model.load(exported["serving_export"])
  images = tf.random.uniform([2, 16, 16, 3], seed=1)
  out = loaded.signatures["serving_float"](images=images)
  assert out["probabilities"].shape == (2, 10)


def test_export_converts_reference_saved_model(tmp_path, r18_fixture_dir):
  cfg = tiny_config(tmp_path, mode="export",
                    checkpoint=str(r18_fixture_dir / "saved_model"))
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                          image_size=32))
  exported = experiment.run_experiment(cfg, print_fn=lambda _: 0)
  io = np.load(r18_fixture_dir / "io.npz")
  loaded = tf.saved_model.load(exported["serving_export"])
  out = loaded.signatures["serving_float"](images=tf.constant(io["inputs"]))
  np.testing.assert_allclose(out["logits"], io["logits_sup"], atol=1e-4)
  np.testing.assert_allclose(out["embedding"], io["final_avg_pool"],
                             atol=1e-4)


def test_pretrain_finetune_supervised_distill_chain(tmp_path):
  """Each stage runs from the command-line config on a labelled fraction."""
  pretrain_dir = tmp_path / "pretrain"
  experiment.run_experiment(tiny_config(pretrain_dir, train_steps=2),
                            print_fn=lambda _: 0)

  def stage(name, **overrides):
    cfg = tiny_config(tmp_path / name, train_mode=name, train_steps=2,
                      label_fraction=0.1, **overrides)
    lines = []
    results = experiment.run_experiment(cfg, print_fn=lines.append)
    return results, lines

  finetuned, lines = stage("finetune", checkpoint=str(pretrain_dir),
                           fine_tune_after_block=2)
  assert any("144 of 1438" in l for l in lines), lines[:5]
  assert finetuned["global_step"] == 2
  assert 0 <= finetuned["label_top_1_accuracy"] <= 1
  supervised, _ = stage("supervised")
  assert supervised["global_step"] == 2
  distilled, lines = stage("distill",
                           teacher_checkpoint=str(tmp_path / "finetune"),
                           distill_temperature=0.5)
  # One teacher serves training and the teacher's evaluation.
  assert len([l for l in lines if l.startswith("teacher: ")]) == 1
  # The schedule counts the unlabelled images the student trains on.
  assert any(l.startswith("data: digits train=1438 (train)") for l in lines)
  assert "teacher_label_top_1_accuracy" in distilled
  assert distilled["teacher_label_top_1_accuracy"] == pytest.approx(
      finetuned["label_top_1_accuracy"])


def test_checkpoint_flag_warm_starts_from_reference_saved_model(
    tmp_path, r18_fixture_dir):
  cfg = tiny_config(tmp_path, train_steps=1, mode="train",
                    checkpoint=str(r18_fixture_dir / "saved_model"))
  cfg = dataclasses.replace(
      cfg, model=configs.ModelConfig(resnet_depth=18, width_multiplier=1.0,
                                     stem=configs.STEM_CIFAR),
      head=configs.HeadConfig(proj_out_dim=128),
      data=dataclasses.replace(cfg.data, image_size=32),
      export=dataclasses.replace(cfg.export, export_at_end=False))
  lines = []
  experiment.run_experiment(cfg, print_fn=lines.append)
  assert any("original-code SavedModel" in l for l in lines)
  # One step at warm-up LR 0 would be trivial; the schedule has no warm-up,
  # so compare a weight that LARS barely moves: the stem kernel stays close.
  reference = tf.train.load_checkpoint(
      str(r18_fixture_dir / "saved_model" / "variables" / "variables"))
  ours = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
  stem_ours = [ours.get_tensor(k) for k in ours.get_variable_to_shape_map()
               if k.startswith("model/") and "stem" in k and "kernel" in k
               and "OPTIMIZER" not in k]
  assert len(stem_ours) == 1 and stem_ours[0].shape == (3, 3, 3, 64)
  reference_kernels = [
      reference.get_tensor(k) for k, shape in
      reference.get_variable_to_shape_map().items() if shape == [3, 3, 3, 64]]
  assert len(reference_kernels) == 1
  np.testing.assert_allclose(stem_ours[0], reference_kernels[0], atol=0.05)
  assert not np.allclose(stem_ours[0], 0)
