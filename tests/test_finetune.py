"""FinetuneTrainer steps, freezing, warm starts and label subsets."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.models import reference_import
from tf_simclr.models import builder
from tf_simclr.models import loading
from tf_simclr.training import finetune
from tf_simclr.training import optimizer as optimizer_lib

SIZE = 8
CLASSES = 5
MODEL = configs.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                            stem=configs.STEM_CIFAR, global_bn=False)
HEAD = configs.HeadConfig(proj_out_dim=16, num_classes=CLASSES)


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(0)


def _model(train_mode="supervised", frozen=-1, head=HEAD, model=MODEL):
  m = builder.build_model(model, head, train_mode, frozen_through_block=frozen)
  m(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  return m


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32),
          "label": (np.arange(n) % CLASSES).astype(np.int32)}


def _trainer(model, batch, optimizer_name="momentum", learning_rate=0.05,
             weight_decay=1e-3, strategy=None):
  strategy = strategy or tf.distribute.get_strategy()
  per_replica = len(batch["label"]) // strategy.num_replicas_in_sync
  with strategy.scope():
    optimizer = optimizer_lib.build_optimizer(
        optimizer_name, learning_rate, weight_decay=weight_decay)
  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: tf.data.Dataset.from_tensor_slices(batch).repeat().batch(
          per_replica, drop_remainder=True))
  return finetune.FinetuneTrainer(strategy, model, optimizer, dataset,
                                  optimizer_name=optimizer_name,
                                  weight_decay=weight_decay)


def _train(trainer, steps=1):
  return {k: float(v) for k, v in
          trainer.train(tf.constant(steps, tf.int32)).items()}


def _np_cross_entropy(logits, labels):
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return float(-log_probs[np.arange(len(labels)), labels].mean())


def _values(variables):
  return {v.name: v.numpy().copy() for v in variables}


# ------------------------------------------------------------- training ---


def test_first_step_loss_matches_numpy_and_training_lowers_it():
  model = _model()
  batch = _batch()
  logits = model(batch["image"], training=True)["logits_sup"].numpy()
  decay = 1e-3 * sum(0.5 * float(np.sum(v.numpy() ** 2))
                     for v in model.trainable_variables
                     if "batch_normalization" not in v.name)
  before = _values(model.trainable_variables)
  trainer = _trainer(model, batch)
  first = _train(trainer)
  assert set(first) == {"total_loss", "supervised_loss", "supervised_acc",
                        "weight_decay_loss", "learning_rate",
                        "gradient_norm"}
  expected_ce = _np_cross_entropy(logits, batch["label"])
  assert first["supervised_loss"] == pytest.approx(expected_ce, rel=1e-4)
  assert first["weight_decay_loss"] == pytest.approx(decay, rel=1e-4)
  assert first["total_loss"] == pytest.approx(expected_ce + decay, rel=1e-4)
  assert first["learning_rate"] == pytest.approx(0.05)
  for _ in range(5):
    last = _train(trainer)
  after = _values(model.trainable_variables)
  unchanged = {n for n in before if np.array_equal(before[n], after[n])}
  # Every variable moves (the L2 term reaches the unused projection layers'
  # kernels too, SPEC quirk Q8) except the unused projection layers' batch
  # norms, which are outside the loss. (The zero-initialised last BN of each
  # residual branch only blocks its branch's gradients in the first step.)
  assert unchanged == {n for n in before if "projection_head" in n and
                       "batch_normalization" in n}
  assert len(unchanged) == 5  # gamma+beta of two hidden BNs, gamma of last
  assert last["supervised_loss"] < 0.9 * first["supervised_loss"]


def _part_variables(model, index):
  return model.backbone.parts[index].variables


def test_frozen_blocks_keep_weights_and_bn_statistics():
  model = _model("finetune", frozen=2)
  frozen = [v for i in range(3) for v in _part_variables(model, i)]
  unfrozen = list(_part_variables(model, 3))
  trainable_ids = {id(v) for v in model.trainable_variables}
  assert frozen and not trainable_ids & {id(v) for v in frozen}
  assert trainable_ids >= {id(v) for v in unfrozen if "moving" not in v.name}
  frozen_before = _values(frozen)
  unfrozen_before = _values(unfrozen)
  assert any("moving_mean" in n for n in frozen_before)
  _train(_trainer(model, _batch(), learning_rate=0.1), steps=2)
  for name, value in _values(frozen).items():
    np.testing.assert_array_equal(value, frozen_before[name], err_msg=name)
  unfrozen_after = _values(unfrozen)
  for kind in ("kernel", "moving_mean", "moving_variance", "gamma"):
    names = [n for n in unfrozen_before if kind in n]
    assert names, kind
    assert all(not np.array_equal(unfrozen_before[n], unfrozen_after[n])
               for n in names), kind


@pytest.mark.slow
def test_two_replicas_match_one_replica_on_the_same_global_batch(
    two_cpu_strategy):
  # Synchronised BN over 2 x 4 images and the per-replica loss / 2 must give
  # exactly the single-replica step on the 8 images.
  batch = _batch()
  single = _model("finetune", frozen=1)
  model_cfg = configs.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                                  stem=configs.STEM_CIFAR, global_bn=True)
  with two_cpu_strategy.scope():
    mirrored = _model("finetune", frozen=1, model=model_cfg)
  mirrored.set_weights(single.get_weights())
  metrics_1 = _train(_trainer(single, batch), steps=2)
  metrics_2 = _train(_trainer(mirrored, batch, strategy=two_cpu_strategy),
                     steps=2)
  assert metrics_2["total_loss"] == pytest.approx(metrics_1["total_loss"],
                                                  rel=1e-4)
  for a, b in zip(single.variables, mirrored.variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-5, rtol=1e-4,
                               err_msg=a.name)
  assert not np.allclose(single.supervised_head.dense.bias.numpy(), 0.0)


def test_rejects_model_without_supervised_head():
  model = _model("pretrain", head=configs.HeadConfig(
      proj_out_dim=16, lineareval_while_pretraining=False))
  with pytest.raises(ValueError, match="supervised head"):
    _trainer(model, _batch())


@pytest.mark.parametrize("selector,input_dim", [
    (0, 64), (1, 64), (2, 64), (3, 16), (-1, 16)])
def test_ft_proj_selector_sets_supervised_head_input(selector, input_dim):
  head = configs.HeadConfig(proj_out_dim=16, num_classes=CLASSES,
                            ft_proj_selector=selector)
  model = _model("finetune", head=head)
  assert model.supervised_head.dense.kernel.shape == (input_dim, CLASSES)


# ---------------------------------------------------------- warm starts ---


def _pretrained_checkpoint(tmp_path, num_classes=CLASSES):
  pretrained = _model("pretrain", head=configs.HeadConfig(
      proj_out_dim=16, num_classes=num_classes))
  # Distinct values everywhere (BN statistics included), so that a variable
  # left at its initial value cannot pass for a restored one.
  rng = np.random.default_rng(1)
  for variable in pretrained.variables:
    variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
  tf.train.Checkpoint(model=pretrained).save(str(tmp_path / "ckpt"))
  return pretrained


def _assert_same(variables_a, variables_b):
  # By name: freezing changes the order (trainable variables come first).
  a, b = _values(variables_a), _values(variables_b)
  assert len(a) == len(variables_a) and sorted(a) == sorted(b)
  for name, value in a.items():
    np.testing.assert_array_equal(value, b[name], err_msg=name)


def test_warm_start_from_pretraining_checkpoint(tmp_path):
  pretrained = _pretrained_checkpoint(tmp_path)
  lines = []
  model = _model("finetune", frozen=2)
  prefix = loading.warm_start(model, str(tmp_path),
                                        print_fn=lines.append)
  assert prefix.endswith("ckpt-1")
  _assert_same(model.backbone.variables, pretrained.backbone.variables)
  _assert_same(model.projection_head.variables,
               pretrained.projection_head.variables)
  # Same classes: the linear-eval head comes along, as in the reference.
  _assert_same(model.supervised_head.variables,
               pretrained.supervised_head.variables)
  assert "supervised head loaded" in lines[0]

  zeroed = _model("finetune", head=configs.HeadConfig(
      proj_out_dim=16, num_classes=CLASSES, zero_init_logits_layer=True))
  loading.warm_start(zeroed, str(tmp_path),
                               zero_init_logits_layer=True,
                               print_fn=lines.append)
  _assert_same(zeroed.backbone.variables, pretrained.backbone.variables)
  assert not np.any(zeroed.supervised_head.dense.kernel.numpy())
  assert not np.any(zeroed.supervised_head.dense.bias.numpy())
  logits = zeroed(_batch()["image"], training=False)["logits_sup"].numpy()
  np.testing.assert_array_equal(logits, np.zeros_like(logits))


def test_warm_start_with_other_classes_skips_the_head(tmp_path):
  pretrained = _pretrained_checkpoint(tmp_path, num_classes=3)
  model = _model("finetune")
  initial_head = _values(model.supervised_head.variables)
  lines = []
  loading.warm_start(model, str(tmp_path), print_fn=lines.append)
  _assert_same(model.backbone.variables, pretrained.backbone.variables)
  for name, value in _values(model.supervised_head.variables).items():
    np.testing.assert_array_equal(value, initial_head[name])
  assert "left at its initial values" in lines[0]


def test_warm_start_rejects_other_architectures_and_empty_dirs(tmp_path):
  _pretrained_checkpoint(tmp_path)
  wider = _model("finetune", model=configs.ModelConfig(
      resnet_depth=18, width_multiplier=0.25, stem=configs.STEM_CIFAR,
      global_bn=False))
  with pytest.raises(ValueError):
    loading.warm_start(wider, str(tmp_path), print_fn=lambda _: 0)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="holds no checkpoint"):
    loading.warm_start(_model("finetune"), str(empty),
                                 print_fn=lambda _: 0)


def _fixture_finetune_model(r18_fixture_dir, num_classes=10):
  config = json.loads((r18_fixture_dir / "manifest.json").read_text())["config"]
  model = builder.build_model(
      configs.ModelConfig(resnet_depth=18, width_multiplier=1.0,
                          stem=configs.reference_stem(config["image_size"],
                                                      0.0),
                          global_bn=False),
      configs.HeadConfig(num_proj_layers=config["num_proj_layers"],
                         proj_out_dim=config["proj_out_dim"],
                         num_classes=num_classes),
      "finetune", frozen_through_block=2)
  model(tf.zeros([1, 32, 32, 3]), training=False)
  return model


def test_restore_reference_fixture_into_finetune_model(r18_fixture_dir):
  io = np.load(r18_fixture_dir / "io.npz")
  saved_model = str(r18_fixture_dir / "saved_model")
  model = _fixture_finetune_model(r18_fixture_dir)
  initial_head = model.supervised_head.dense.kernel.numpy().copy()
  report = reference_import.load_reference_weights_into(
      model, saved_model, include_supervised_head=False)
  assert report["missing"] == []
  outputs = model(io["inputs"], training=False)
  np.testing.assert_allclose(outputs["final_avg_pool"].numpy(),
                             io["final_avg_pool"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(model.supervised_head.dense.kernel.numpy(),
                                initial_head)
  # Through the fine-tuning warm start: 10 classes, so the head is loaded...
  loading.warm_start(model, saved_model, print_fn=lambda _: 0)
  np.testing.assert_allclose(
      model(io["inputs"], training=False)["logits_sup"].numpy(),
      io["logits_sup"], atol=1e-4, rtol=0)
  # ...unless zero_init_logits_layer asks for a zeroed classifier.
  loading.warm_start(model, saved_model,
                               zero_init_logits_layer=True,
                               print_fn=lambda _: 0)
  logits = model(io["inputs"], training=False)["logits_sup"].numpy()
  np.testing.assert_array_equal(logits, np.zeros_like(logits))
  np.testing.assert_allclose(
      model(io["inputs"], training=False)["proj_head_output"].numpy(),
      io["proj_head_output"], atol=1e-4, rtol=0)
  # Another label set: everything but the 10-class head is loaded.
  other = _fixture_finetune_model(r18_fixture_dir, num_classes=7)
  initial_head = other.supervised_head.dense.kernel.numpy().copy()
  lines = []
  loading.warm_start(other, saved_model, print_fn=lines.append)
  np.testing.assert_allclose(
      other(io["inputs"], training=False)["final_avg_pool"].numpy(),
      io["final_avg_pool"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(other.supervised_head.dense.kernel.numpy(),
                                initial_head)
  assert "left at its initial values" in lines[0]


@pytest.mark.slow
def test_xla_step_matches_the_uncompiled_step():
  batch = _batch()
  plain = _model("finetune", frozen=1)
  compiled = _model("finetune", frozen=1)
  compiled.set_weights(plain.get_weights())
  strategy = tf.distribute.get_strategy()
  with strategy.scope():
    optimizer = optimizer_lib.build_optimizer("lars", 0.1, weight_decay=1e-4)
  dataset = tf.data.Dataset.from_tensor_slices(batch).repeat().batch(8)
  jit_trainer = finetune.FinetuneTrainer(strategy, compiled, optimizer,
                                         dataset, optimizer_name="lars",
                                         weight_decay=1e-4, jit_compile=True)
  reference = _train(_trainer(plain, batch, optimizer_name="lars",
                              learning_rate=0.1, weight_decay=1e-4), steps=2)
  metrics = _train(jit_trainer, steps=2)
  assert metrics["total_loss"] == pytest.approx(reference["total_loss"],
                                                rel=1e-4)
  for a, b in zip(plain.variables, compiled.variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=1e-4,
                               err_msg=a.name)
