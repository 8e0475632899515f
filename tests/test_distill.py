"""Distillation loss, DistillTrainer and teacher loading."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.models import builder
from tf_simclr.models import loading
from tf_simclr.training import checkpoints
from tf_simclr.training import distill
from tf_simclr.training import optimizer as optimizer_lib

SIZE = 8
CLASSES = 5


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(0)


def _model_config(width):
  return configs.ModelConfig(resnet_depth=18, width_multiplier=width,
                             stem=configs.STEM_CIFAR, global_bn=False)


def _model(width, train_mode, num_classes=CLASSES):
  model = builder.build_model(
      _model_config(width),
      configs.HeadConfig(proj_out_dim=16, num_classes=num_classes),
      train_mode)
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  return model


def _teacher(num_classes=CLASSES):
  teacher = _model(0.25, "finetune", num_classes)
  # A confident teacher: larger logits than the 0.01-std initial head gives.
  kernel = teacher.supervised_head.dense.kernel
  kernel.assign(kernel * 300.0)
  return teacher


def _batch(n, seed):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32),
          "label": (np.arange(n) % CLASSES).astype(np.int32)}


def _distributed(strategy, batch):
  per_replica = len(batch["label"]) // strategy.num_replicas_in_sync
  return strategy.distribute_datasets_from_function(
      lambda ctx: tf.data.Dataset.from_tensor_slices(batch).repeat().batch(
          per_replica, drop_remainder=True))


def _trainer(teacher, student, unlabelled, labelled=None, alpha=0.0,
             learning_rate=0.05, weight_decay=1e-3, temperature=2.0,
             squared=True, strategy=None):
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    optimizer = optimizer_lib.build_optimizer("momentum", learning_rate,
                                              weight_decay=weight_decay)
  dataset = _distributed(strategy, unlabelled)
  if labelled is not None:
    dataset = {distill.UNLABELLED: dataset,
               distill.LABELLED: _distributed(strategy, labelled)}
  return distill.DistillTrainer(
      strategy, teacher, student, optimizer, dataset, num_classes=CLASSES,
      optimizer_name="momentum", weight_decay=weight_decay,
      temperature=temperature, scale_by_temperature_squared=squared,
      distill_label_weight=alpha)


def _train(trainer, steps=1):
  return {k: float(v) for k, v in
          trainer.train(tf.constant(steps, tf.int32)).items()}


def _np_log_softmax(x):
  shifted = x - x.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _np_distill(teacher, student, tau, squared):
  targets = np.exp(_np_log_softmax(teacher / tau))
  loss = float(-(targets * _np_log_softmax(student / tau)).sum(1).mean())
  return loss * tau ** 2 if squared else loss


def _np_cross_entropy(logits, labels):
  return float(-_np_log_softmax(logits)[np.arange(len(labels)), labels].mean())


def _values(variables):
  return {v.name: v.numpy().copy() for v in variables}


# ------------------------------------------------------------------ loss ---


@pytest.mark.parametrize("tau", [0.1, 1.0, 2.0])
@pytest.mark.parametrize("squared", [False, True])
def test_distillation_loss_matches_numpy(tau, squared):
  rng = np.random.default_rng(7)
  teacher = rng.normal(scale=3.0, size=(6, CLASSES)).astype(np.float32)
  student = rng.normal(scale=3.0, size=(6, CLASSES)).astype(np.float32)
  loss = distill.distillation_loss(teacher, student, tau,
                                   scale_by_temperature_squared=squared)
  assert loss.dtype == tf.float32
  assert float(loss) == pytest.approx(_np_distill(teacher, student, tau,
                                                  squared), rel=1e-5)


def test_distillation_loss_golden_value_and_minimum():
  teacher = np.array([[2.0, 0.0, -1.0]], np.float32)
  student = np.array([[0.0, 1.0, 0.0]], np.float32)
  # p = softmax([1, 0, -0.5]); -sum p * log softmax([0, 0.5, 0]).
  assert float(distill.distillation_loss(teacher, student, 2.0)) == (
      pytest.approx(1.1787648, rel=1e-6))
  # The cross-entropy is smallest (the teacher's entropy) when they agree.
  same = float(distill.distillation_loss(teacher, teacher, 2.0))
  p = np.exp(_np_log_softmax(teacher / 2.0))
  assert same == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-5)


def test_mix_losses_formula():
  distill_loss, labelled = tf.constant(2.0), tf.constant(0.5)
  assert float(distill.mix_losses(distill_loss, labelled, 0.0)) == 2.0
  assert float(distill.mix_losses(distill_loss, None, 0.0)) == 2.0
  assert float(distill.mix_losses(distill_loss, labelled, 0.3)) == (
      pytest.approx(0.7 * 2.0 + 0.3 * 0.5))
  with pytest.raises(ValueError, match="labelled must be given"):
    distill.mix_losses(distill_loss, None, 0.3)
  with pytest.raises(ValueError, match="distill_label_weight"):
    distill.mix_losses(distill_loss, labelled, 1.5)


def test_distillation_loss_argument_errors():
  logits = np.zeros([2, CLASSES], np.float32)
  with pytest.raises(ValueError, match="temperature"):
    distill.distillation_loss(logits, logits, 0.0)
  with pytest.raises(ValueError, match="teacher predicts 7 classes.*has 5"):
    distill.distillation_loss(np.zeros([2, 7], np.float32), logits, 1.0)


# --------------------------------------------------------------- trainer ---


def test_step_loss_matches_numpy_with_labelled_mixing():
  # Learning rate 0: the weights stay put, so the logged loss can be checked
  # against logits computed beforehand. Teacher R18 x0.25, student x0.125.
  teacher, student = _teacher(), _model(0.125, "distill")
  unlabelled, labelled = _batch(8, seed=1), _batch(4, seed=2)
  teacher_logits = teacher(unlabelled["image"], training=False)[
      "logits_sup"].numpy()
  student_logits = student(
      np.concatenate([unlabelled["image"], labelled["image"]]),
      training=True)["logits_sup"].numpy()
  decay = 1e-3 * sum(0.5 * float(np.sum(v.numpy() ** 2))
                     for v in student.trainable_variables
                     if "batch_normalization" not in v.name)
  trainer = _trainer(teacher, student, unlabelled, labelled, alpha=0.3,
                     learning_rate=0.0)
  metrics = _train(trainer)
  assert set(metrics) == {"total_loss", "distill_loss", "teacher_agreement",
                          "supervised_loss", "supervised_acc",
                          "weight_decay_loss", "learning_rate",
                          "gradient_norm"}
  expected_distill = _np_distill(teacher_logits, student_logits[:8], 2.0, True)
  expected_ce = _np_cross_entropy(student_logits[8:], labelled["label"])
  assert metrics["distill_loss"] == pytest.approx(expected_distill, rel=1e-4)
  assert metrics["supervised_loss"] == pytest.approx(expected_ce, rel=1e-4)
  assert metrics["weight_decay_loss"] == pytest.approx(decay, rel=1e-4)
  assert metrics["total_loss"] == pytest.approx(
      0.7 * expected_distill + 0.3 * expected_ce + decay, rel=1e-4)
  agreement = np.mean(student_logits[:8].argmax(1) ==
                      teacher_logits.argmax(1))
  assert metrics["teacher_agreement"] == pytest.approx(agreement)


def test_teacher_is_never_trained_and_student_learns():
  teacher, student = _teacher(), _model(0.125, "distill")
  unlabelled = _batch(8, seed=3)
  teacher_before = _values(teacher.variables)
  student_before = _values(student.trainable_variables)
  trainer = _trainer(teacher, student, unlabelled, learning_rate=0.1,
                     weight_decay=0.0, squared=False, temperature=1.0)
  first = _train(trainer)
  assert "supervised_loss" not in first
  _train(trainer, steps=3)
  last = _train(trainer)
  for name, value in _values(teacher.variables).items():
    np.testing.assert_array_equal(value, teacher_before[name], err_msg=name)
  student_after = _values(student.trainable_variables)
  kernel = student.supervised_head.dense.kernel.name
  assert not np.array_equal(student_after[kernel], student_before[kernel])
  assert last["distill_loss"] < 0.9 * first["distill_loss"]



def test_student_gradients_exist_and_teacher_gradients_do_not():
  teacher, student = _teacher(), _model(0.125, "distill")
  trainer = _trainer(teacher, student, _batch(8, seed=4))
  images = tf.constant(_batch(8, seed=4)["image"])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(teacher.variables)
    total, _ = trainer.compute_loss(images)
  teacher_gradients = tape.gradient(total, teacher.variables)
  student_gradients = tape.gradient(total, student.trainable_variables)
  assert len(teacher_gradients) == len(teacher.variables) > 0
  assert all(g is None for g in teacher_gradients)
  kernel = student.supervised_head.dense.kernel
  kernel_gradient = student_gradients[
      [id(v) for v in student.trainable_variables].index(id(kernel))]
  assert float(tf.norm(kernel_gradient)) > 0


def test_class_count_mismatch_is_a_clear_error():
  student = _model(0.125, "distill")
  with pytest.raises(ValueError, match="teacher predicts 10 classes.*has 5"):
    _trainer(_teacher(num_classes=10), student, _batch(8, seed=5))

  def callable_teacher(images, training=False):
    del training
    return {"logits_sup": tf.zeros([tf.shape(images)[0], 7])}

  trainer = _trainer(callable_teacher, student, _batch(8, seed=5))
  with pytest.raises(ValueError, match="teacher predicts 7 classes.*has 5"):
    _train(trainer)


def test_trainer_argument_errors():
  teacher, student = _teacher(), _model(0.125, "distill")
  batch = _batch(8, seed=6)
  with pytest.raises(ValueError, match="train_dataset must be a dict"):
    _trainer(teacher, student, batch, alpha=0.5)
  with pytest.raises(ValueError, match="train_dataset must be a dict"):
    _trainer(teacher, student, batch, labelled=batch, alpha=0.0)
  with pytest.raises(ValueError, match="student must be"):
    _trainer(teacher, builder.build_model(
        _model_config(0.125),
        configs.HeadConfig(proj_out_dim=16,
                           lineareval_while_pretraining=False),
        "pretrain"), batch)
  with pytest.raises(ValueError, match="temperature"):
    _trainer(teacher, student, batch, temperature=0.0)


@pytest.mark.slow
def test_two_replicas_distill_step(two_cpu_strategy):
  with two_cpu_strategy.scope():
    teacher, student = _teacher(), _model(0.125, "distill")
  teacher_before = _values(teacher.variables)
  trainer = _trainer(teacher, student, _batch(8, seed=7), _batch(4, seed=8),
                     alpha=0.5, strategy=two_cpu_strategy)
  metrics = _train(trainer, steps=2)
  assert np.isfinite(metrics["total_loss"])
  assert metrics["supervised_loss"] > 0
  for name, value in _values(teacher.variables).items():
    np.testing.assert_array_equal(value, teacher_before[name], err_msg=name)


# ---------------------------------------------------------- load_teacher ---


def _saved_teacher_dir(tmp_path, train_mode="finetune", lineareval=True):
  cfg = configs.ExperimentConfig(
      model=dataclasses.replace(_model_config(0.25), global_bn=True),
      head=configs.HeadConfig(proj_out_dim=16, num_classes=7,
                              ft_proj_selector=1,
                              lineareval_while_pretraining=lineareval),
      data=configs.DataConfig(image_size=SIZE),
      train=configs.TrainConfig(train_mode=train_mode,
                                model_dir=str(tmp_path)))
  model = builder.build_model(cfg.model, cfg.head, train_mode)
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  rng = np.random.default_rng(9)
  for variable in model.variables:
    variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
  optimizer = optimizer_lib.build_optimizer("momentum", 0.1)
  checkpoints.make_checkpoint_manager(model, optimizer, str(tmp_path),
                                      1).save(checkpoint_number=12)
  (tmp_path / "config.json").write_text(cfg.to_json())
  return model


def test_load_teacher_builds_the_architecture_from_config_json(tmp_path):
  original = _saved_teacher_dir(tmp_path)
  lines = []
  strategy = tf.distribute.get_strategy()
  teacher = loading.load_teacher(str(tmp_path), strategy,
                                 print_fn=lines.append)
  assert teacher.backbone.width_multiplier == 0.25
  assert teacher.supervised_head.num_classes == 7
  assert teacher.projection_head.ft_proj_selector == 1
  assert not teacher.trainable and not teacher.trainable_variables
  images = _batch(4, seed=10)["image"]
  np.testing.assert_allclose(
      teacher(images, training=False)["logits_sup"].numpy(),
      original(images, training=False)["logits_sup"].numpy(), rtol=1e-5)
  assert "x0.25" in lines[0] and "7 classes" in lines[0]
  # A prefix inside the model_dir works too.
  by_prefix = loading.load_teacher(str(tmp_path / "ckpt-12"), strategy,
                                   print_fn=lambda _: 0)
  assert by_prefix.supervised_head.num_classes == 7
  # The loaded teacher drives a trainer only with a 7-class student.
  with pytest.raises(ValueError, match="teacher predicts 7 classes"):
    _trainer(teacher, _model(0.125, "distill"), _batch(8, seed=11))


def test_load_teacher_errors(tmp_path):
  strategy = tf.distribute.get_strategy()
  with pytest.raises(ValueError, match="config.json"):
    loading.load_teacher(str(tmp_path), strategy)
  _saved_teacher_dir(tmp_path / "pretrained", train_mode="pretrain",
                     lineareval=False)
  with pytest.raises(ValueError, match="without a supervised head"):
    loading.load_teacher(str(tmp_path / "pretrained"), strategy)
  with pytest.raises(ValueError, match="config.json"):
    loading.load_teacher(str(tmp_path / "nowhere"), strategy)


def test_load_teacher_from_reference_saved_model(r18_fixture_dir):
  io = np.load(r18_fixture_dir / "io.npz")
  teacher = loading.load_teacher(str(r18_fixture_dir / "saved_model"),
                                 tf.distribute.get_strategy(),
                                 print_fn=lambda _: 0)
  assert teacher.supervised_head.num_classes == 10
  np.testing.assert_allclose(
      teacher(io["inputs"], training=False)["logits_sup"].numpy(),
      io["logits_sup"], atol=1e-4, rtol=0)
