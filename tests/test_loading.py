"""One loader for every way weights come in (`tf_simclr.models.loading`)."""

import dataclasses
import os
import re
import uuid

import numpy as np
import pytest
import tensorflow as tf

import tf_simclr
from tf_simclr import configs
from tf_simclr import paths
from tf_simclr.models import builder
from tf_simclr.models import loading
from tf_simclr.training import checkpoints
from tf_simclr.training import experiment
from tf_simclr.training import optimizer as optimizer_lib

SIZE = 16
OUTPUTS = ("final_avg_pool", "proj_head_output", "logits_sup")


def _config(model_dir, train_mode="finetune", width=0.0625, **train):
  return configs.ExperimentConfig(
      model=configs.ModelConfig(resnet_depth=18, width_multiplier=width,
                                stem=configs.STEM_CIFAR),
      head=configs.HeadConfig(proj_out_dim=8, num_classes=10,
                              ft_proj_selector=1),
      data=configs.DataConfig(dataset="digits", image_size=SIZE),
      train=configs.TrainConfig(train_mode=train_mode,
                                model_dir=str(model_dir), **train))


def _write_run(model_dir, cfg, steps=(2, 5), seed=0):
  """A model_dir as the experiment leaves it: config.json and ckpt-<step>.

  Every variable, batch-norm statistics included, gets its own random value
  before each save, so restoring anything but the latest checkpoint, or any
  variable into the wrong place, changes the outputs.
  """
  model = builder.build_model(cfg.model, cfg.head, cfg.train.train_mode)
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  optimizer = optimizer_lib.build_optimizer("momentum", 0.1)
  manager = checkpoints.make_checkpoint_manager(model, optimizer,
                                                str(model_dir), 3)
  rng = np.random.default_rng(seed)
  for step in steps:
    for variable in model.variables:
      variable.assign(rng.uniform(0.5, 1.5, variable.shape)
                      .astype(np.float32))
    manager.save(checkpoint_number=step)
  with tf.io.gfile.GFile(os.path.join(str(model_dir), "config.json"),
                         "w") as f:
    f.write(cfg.to_json())
  return model


def _images(size, n=4, seed=1):
  return np.random.default_rng(seed).uniform(
      size=(n, size, size, 3)).astype(np.float32)


def _assert_same_outputs(loaded, expected, size):
  images = _images(size)
  ours = loaded(images, training=False)
  theirs = expected(images, training=False)
  for key in OUTPUTS:
    np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy(),
                                  err_msg=key)


# ------------------------------------------------------ resolve_checkpoint ---


def test_resolve_checkpoint_prefix_directory_and_ram(tmp_path):
  _write_run(tmp_path, _config(tmp_path))
  assert loading.resolve_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-5")
  # A prefix stands for itself, also an older one.
  assert loading.resolve_checkpoint(str(tmp_path / "ckpt-2")) == str(
      tmp_path / "ckpt-2")
  assert loading.resolve_checkpoint(tmp_path / "ckpt-5") == str(
      tmp_path / "ckpt-5")
  ram = f"ram://loading_{uuid.uuid4().hex[:12]}"
  try:
    _write_run(ram, _config(ram))
    # ram:// calls "ckpt-2" a directory because "ckpt-2.index" exists.
    assert tf.io.gfile.isdir(f"{ram}/ckpt-2")
    assert loading.resolve_checkpoint(f"{ram}/ckpt-2") == f"{ram}/ckpt-2"
    assert loading.resolve_checkpoint(ram) == f"{ram}/ckpt-5"
  finally:
    paths.remove_tree(ram)


def test_resolve_checkpoint_errors_name_the_path(tmp_path):
  missing = str(tmp_path / "no_such_run")
  with pytest.raises(loading.CheckpointNotFoundError,
                     match=re.escape(f"nothing is at {missing!r}")):
    loading.resolve_checkpoint(missing)
  # Both a bad argument and a missing file, for either kind of handler.
  assert issubclass(loading.CheckpointNotFoundError, ValueError)
  assert issubclass(loading.CheckpointNotFoundError, FileNotFoundError)
  with pytest.raises(ValueError, match=re.escape(
      f"directory {str(tmp_path)!r} holds no checkpoint")):
    loading.resolve_checkpoint(str(tmp_path))


# ------------------------------------------------------------------- load ---


def test_load_run_dir_reproduces_the_model_at_any_image_size(tmp_path):
  cfg = _config(tmp_path, fine_tune_after_block=2)
  trained = _write_run(tmp_path, cfg)
  model = tf_simclr.load(str(tmp_path))
  assert model.backbone.width_multiplier == 0.0625
  assert model.supervised_head.num_classes == 10
  assert model.projection_head.ft_proj_selector == 1
  # Not frozen, although the fine-tuning run froze two block groups.
  assert len(model.trainable_variables) == len(trained.trainable_variables)
  _assert_same_outputs(model, trained, SIZE)
  # Built at 24 px: still the trained weights, on 24 px images.
  bigger = tf_simclr.load(str(tmp_path), image_size=24)
  _assert_same_outputs(bigger, trained, 24)
  # An older checkpoint by its prefix differs from the latest.
  older = loading.load(str(tmp_path / "ckpt-2"))
  images = _images(SIZE)
  assert not np.allclose(older(images, training=False)["logits_sup"],
                         trained(images, training=False)["logits_sup"])
  # What export reads: the run's own config and the checkpoint's step.
  loaded = loading.model_from_checkpoint(
      _config("/elsewhere", width=1.0), str(tmp_path), print_fn=lambda _: 0)
  assert loaded.config == cfg and loaded.step == 5
  assert loaded.source == str(tmp_path / "ckpt-5")
  assert loaded.kind == loading.TF_SIMCLR_CHECKPOINT
  _assert_same_outputs(loaded.model, trained, SIZE)
  # The export keeps the run's frozen blocks out of the trainable variables.
  assert (len(trained.trainable_variables) >
          len(loaded.model.trainable_variables) >
          len(trained.supervised_head.trainable_variables))


@pytest.mark.slow
def test_load_run_written_by_the_experiment(tmp_path):
  """A real (two-step) run: every model tensor of its checkpoint comes back."""
  cfg = _config(tmp_path, train_mode="pretrain", distribution="one_device",
                mode="train", train_batch_size=16, train_steps=2,
                checkpoint_steps=2, steps_per_loop=1, jit_compile=False)
  cfg = dataclasses.replace(cfg, export=dataclasses.replace(
      cfg.export, export_at_end=False))
  experiment.run_experiment(cfg, print_fn=lambda _: None)
  model = loading.load(str(tmp_path))
  resaved = tf.train.Checkpoint(model=model).save(str(tmp_path / "re" / "x"))
  run = tf.train.load_checkpoint(str(tmp_path / "ckpt-2"))
  ours = tf.train.load_checkpoint(resaved)
  keys = [k for k in ours.get_variable_to_shape_map()
          if k.startswith("model/")]
  assert len(keys) == len(model.variables) > 100
  for key in keys:
    np.testing.assert_array_equal(ours.get_tensor(key), run.get_tensor(key),
                                  err_msg=key)
  # Two training steps moved the batch-norm statistics off their start.
  moving = [k for k in keys if "moving_mean" in k]
  assert any(np.abs(run.get_tensor(k)).max() > 0 for k in moving)


def test_load_errors_name_the_path(tmp_path):
  missing = str(tmp_path / "missing_run")
  with pytest.raises(FileNotFoundError, match=re.escape(repr(missing))):
    tf_simclr.load(missing)
  with pytest.raises(ValueError, match="config.json.*" + re.escape(
      repr(str(tmp_path)))):
    tf_simclr.load(str(tmp_path))  # Empty: no checkpoint at all.
  _write_run(tmp_path / "run", _config(tmp_path / "run"))
  (tmp_path / "run" / "config.json").unlink()
  prefix = str(tmp_path / "run" / "ckpt-5")
  with pytest.raises(ValueError, match=re.escape(
      f"checkpoint {prefix!r} has no config.json beside it")):
    tf_simclr.load(str(tmp_path / "run"))
  with pytest.raises(ValueError, match="image_size must be a positive"):
    tf_simclr.load(prefix, image_size=0)


def test_architecture_arguments_are_for_original_code_models(tmp_path):
  _write_run(tmp_path, _config(tmp_path))
  with pytest.raises(ValueError, match=r"\['width_multiplier'\] apply to "
                     "original-code models only"):
    tf_simclr.load(str(tmp_path), width_multiplier=2)


# ----------------------------------------------------- restore_and_verify ---


def test_restore_and_verify_rejects_another_architecture(tmp_path):
  _write_run(tmp_path, _config(tmp_path))
  prefix = str(tmp_path / "ckpt-5")
  wider_cfg = _config(tmp_path, width=0.125)
  wider = loading.model_from_config(wider_cfg)
  with pytest.raises(ValueError, match=re.escape(
      f"checkpoint {prefix!r} does not match this model's architecture")):
    loading.restore_and_verify(wider, str(tmp_path))
  # A variable the checkpoint lacks: the pretraining model's head is
  # missing from a checkpoint written without one.
  headless_dir = tmp_path / "headless"
  headless_cfg = dataclasses.replace(
      _config(headless_dir, train_mode="pretrain"),
      head=dataclasses.replace(_config(headless_dir).head,
                               lineareval_while_pretraining=False))
  _write_run(headless_dir, headless_cfg)
  with_head = loading.model_from_config(
      _config(headless_dir, train_mode="pretrain"))
  with pytest.raises(ValueError, match=re.escape(
      f"checkpoint {str(headless_dir / 'ckpt-5')!r} does not match the run")):
    loading.restore_and_verify(with_head, str(headless_dir),
                               against="the run")
  # The config.json of a run that does not match its checkpoints.
  (tmp_path / "config.json").write_text(wider_cfg.to_json())
  config_path = str(tmp_path / "config.json")
  with pytest.raises(ValueError, match=re.escape(
      f"checkpoint {prefix!r} does not match the architecture in "
      f"{config_path!r}")):
    tf_simclr.load(str(tmp_path))


# ------------------------------------------------------ teacher, warm start ---


def test_teacher_and_warm_start_share_the_loader(tmp_path):
  cfg = _config(tmp_path)
  trained = _write_run(tmp_path, cfg)
  lines = []
  teacher = loading.load_teacher(str(tmp_path), tf.distribute.get_strategy(),
                                 print_fn=lines.append)
  assert not teacher.trainable_variables
  _assert_same_outputs(teacher, trained, SIZE)
  assert lines == [
      f"teacher: tf_simclr checkpoint {tmp_path / 'ckpt-5'} (ResNet-18 "
      f"x0.0625, sk_ratio 0, 10 classes, from {tmp_path / 'config.json'})"]
  # A pretraining model without a supervised head takes backbone and
  # projection head; zeroing a head it does not have is an error.
  headless = builder.build_model(
      cfg.model, dataclasses.replace(cfg.head,
                                     lineareval_while_pretraining=False),
      "pretrain")
  headless(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  lines = []
  loading.warm_start(headless, str(tmp_path), print_fn=lines.append)
  assert lines == [f"warm start: tf_simclr checkpoint {tmp_path / 'ckpt-5'} "
                   "(no supervised head)"]
  images = _images(SIZE)
  np.testing.assert_array_equal(
      headless(images, training=False)["proj_head_output"].numpy(),
      trained(images, training=False)["proj_head_output"].numpy())
  with pytest.raises(ValueError, match="zero_init_logits_layer"):
    loading.warm_start(headless, str(tmp_path), zero_init_logits_layer=True)
