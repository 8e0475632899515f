"""Tests for tf_simclr.export.hub and model_card (TF Hub export, issue 7)."""

import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras as keras

import tf_simclr
from tf_simclr import configs
from tf_simclr.export import hub as hub_export
from tf_simclr.export import model_card
from tf_simclr.export import serving
from tf_simclr.models import builder

from conftest import EXPORT_IMAGE_SIZE as IMAGE_SIZE
from conftest import EXPORT_OUTPUT_KEYS as OUTPUT_KEYS
from conftest import randomise_batch_norm
from conftest import tiny_export_model

NUM_CLASSES = 3
METADATA = {
    "name": "simclr_r18_tiny",
    "global_step": 120,
    "metrics": {"top1_accuracy": 0.5, "loss": 1.25},
    "config": {
        "data": {"dataset": "cifar10"},
        "train": {"train_mode": "finetune", "train_epochs": 3.0,
                  "train_batch_size": 64},
    },
}


def tiny_model() -> keras.Model:
  model = tiny_export_model(NUM_CLASSES)
  randomise_batch_norm(model, seed=11, affine=False)
  return model


def images(seed: int, batch: int = 8) -> np.ndarray:
  return np.random.RandomState(seed).uniform(
      0, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = tiny_model()
  hub_dir = str(tmp_path_factory.mktemp("hub") / "simclr_r18")
  result = hub_export.export_hub(model, hub_dir, image_size=IMAGE_SIZE,
                                 metadata=METADATA)
  return {"model": model, "dir": result}


def test_files_written(exported):
  hub_dir = exported["dir"]
  parent = os.path.dirname(hub_dir)
  assert sorted(os.listdir(parent)) == [
      "simclr_r18", "simclr_r18.md", "simclr_r18.tar.gz"]
  metadata = serving.read_metadata(hub_dir)
  assert metadata["format"] == "tf_simclr_hub"
  assert metadata["global_step"] == 120
  assert metadata["feature_dim"] == 64
  assert metadata["num_classes"] == NUM_CLASSES
  assert metadata["architecture"]["depth"] == 18


def test_hub_load_follows_reusable_saved_model_api(exported):
  model = exported["model"]
  module = hub.load(exported["dir"])
  x = images(0)
  features = module(x, training=False)
  np.testing.assert_allclose(
      features, model(x, training=False)["final_avg_pool"], atol=1e-5)
  assert features.shape == (8, 64)
  outputs = module.outputs(x)  # training defaults to False.
  assert sorted(outputs) == sorted(OUTPUT_KEYS)
  expected = model(x, training=False)
  for name in OUTPUT_KEYS:
    np.testing.assert_allclose(outputs[name], expected[name], atol=1e-5,
                               err_msg=name)
  assert len(module.variables) == len(model.variables) == 121
  # Only the backbone is trainable through __call__.
  assert len(module.trainable_variables) == len(
      model.backbone.trainable_variables) == 63
  assert list(module.regularization_losses) == []


def _variables_by_value(layer) -> list:
  return [w.numpy().copy() for w in layer.weights]


def test_keras_layer_batch_norm_modes(exported):
  """Training mode uses batch statistics and updates moving averages."""
  model = exported["model"]
  layer = hub.KerasLayer(exported["dir"], trainable=True)
  x = images(1)
  inference = layer(x, training=False)
  np.testing.assert_allclose(
      inference, model.backbone(x, training=False)["final_avg_pool"],
      atol=1e-5)
  before = _variables_by_value(layer)
  training = layer(x, training=True)
  # The same step in memory, on the same starting values (restored after,
  # the model is shared with other tests).
  saved = [v.numpy() for v in model.variables]
  try:
    with serving.per_replica_batch_norm(model):
      expected = model.backbone(x, training=True)["final_avg_pool"]
    np.testing.assert_allclose(training, expected, atol=1e-4, rtol=1e-4)
    assert np.abs(training - inference).max() > 1e-2
    after = _variables_by_value(layer)
    names = [w.name for w in layer.weights]
    changed = {n for n, a, b in zip(names, before, after)
               if not np.array_equal(a, b)}
    # Every backbone moving statistic (21 BNs) and nothing else.
    assert len(changed) == 42
    assert all("moving" in n for n in changed)
    by_name = {v.name: v for v in model.variables}
    for name, value in zip(names, after):
      np.testing.assert_allclose(value, by_name[name].numpy(), atol=1e-5,
                                 err_msg=name)
  finally:
    for variable, value in zip(model.variables, saved):
      variable.assign(value)


def _classifier(module_dir: str, trainable: bool):
  layer = hub.KerasLayer(module_dir, trainable=trainable)
  inputs = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
  logits = keras.layers.Dense(
      2, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(
          layer(inputs))
  classifier = keras.Model(inputs, logits)
  classifier.compile(
      optimizer=keras.optimizers.Adam(1e-2),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return classifier, layer


def _labelled_set():
  x = images(2, batch=16)
  # Labels a linear function of the features can fit: bright vs dark.
  x[:8] *= 0.5
  x[8:] = 0.5 + 0.5 * x[8:]
  y = np.array([0] * 8 + [1] * 8)
  return x, y


def test_keras_layer_fine_tuning_changes_weights_and_lowers_loss(exported):
  keras.utils.set_random_seed(0)
  classifier, layer = _classifier(exported["dir"], trainable=True)
  assert len(layer.trainable_weights) == 63
  x, y = _labelled_set()
  before = _variables_by_value(layer)
  history = classifier.fit(x, y, batch_size=16, epochs=6, shuffle=False,
                           verbose=0)
  losses = history.history["loss"]
  assert losses[-1] < 0.7 * losses[0], losses
  after = _variables_by_value(layer)
  changed = {w.name for w, a, b in zip(layer.weights, before, after)
             if not np.array_equal(a, b)}
  trainable = {w.name for w in layer.trainable_weights}
  assert trainable <= changed  # Every backbone weight moved.
  assert len(changed) == 63 + 42  # Plus the backbone's moving statistics.


def test_keras_layer_frozen_changes_nothing(exported):
  classifier, layer = _classifier(exported["dir"], trainable=False)
  assert layer.trainable_weights == []
  x, y = _labelled_set()
  before = _variables_by_value(layer)
  dense_before = classifier.layers[-1].kernel.numpy().copy()
  classifier.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
  after = _variables_by_value(layer)
  for w, a, b in zip(layer.weights, before, after):
    np.testing.assert_array_equal(a, b, err_msg=w.name)
  assert not np.array_equal(classifier.layers[-1].kernel.numpy(),
                            dense_before)


def test_archive_holds_the_module_at_its_root(exported, tmp_path):
  archive = exported["dir"] + ".tar.gz"
  with tarfile.open(archive) as tar:
    members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {"saved_model.pb", "variables/variables.index",
            "variables/variables.data-00000-of-00001",
            "assets.extra/tf_simclr_export.json"} <= set(names)
    assert all(m.mtime == 0 and m.uid == 0 for m in members)
    tar.extractall(tmp_path / "unpacked", filter="data")
  for name in names:
    with open(os.path.join(exported["dir"], name), "rb") as original:
      with open(tmp_path / "unpacked" / name, "rb") as unpacked:
        assert original.read() == unpacked.read(), name
  module = hub.load(str(tmp_path / "unpacked"))
  x = images(3, batch=2)
  np.testing.assert_allclose(module(x), hub.load(exported["dir"])(x),
                             atol=0)


def test_model_card(exported):
  with open(exported["dir"] + ".md") as f:
    card = f.read()
  lines = card.splitlines()
  assert lines[0] == "# Module tf_simclr/simclr_r18_tiny/1"
  for tag in ("<!-- asset-path: simclr_r18.tar.gz -->",
              "<!-- task: image-feature-vector -->",
              "<!-- network-architecture: resnet-18 -->",
              "<!-- format: saved_model_2 -->",
              "<!-- fine-tunable: true -->",
              "<!-- license: apache-2.0 -->",
              "<!-- dataset: cifar10 -->"):
    assert tag in lines, tag
  model = exported["model"]
  parameters = sum(int(np.prod(v.shape)) for v in model.variables)
  for row in ("| ResNet depth | 18 |", "| width multiplier | 0.125 |",
              "| feature vector width | 64 |",
              f"| supervised head classes | {NUM_CLASSES} |",
              f"| parameters (all variables) | {parameters} |",
              "| top1_accuracy | 0.5 |", "| loss | 1.25 |"):
    assert row in lines, row
  for text in ("(`train_mode=finetune`)", "* Training data: cifar10.",
               "* Training steps: 120.", "* Global batch size: 64.",
               "16 x 16", "float32 `[batch, height, width, 3]`",
               "hub.KerasLayer(MODULE_PATH, trainable=True)",
               "## Licence", "released under the `apache-2.0` licence"):
    assert text in card, text


def test_render_model_card_defaults_and_validation():
  architecture = {"depth": 50, "width_multiplier": 2, "sk_ratio": 0.0625,
                  "feature_dim": 4096, "num_classes": None}
  card = model_card.render_model_card(
      {}, architecture=architecture, image_size=224, feature_dim=4096,
      num_classes=None)
  lines = card.splitlines()
  assert lines[0] == "# Module tf_simclr/simclr_resnet50_2x/1"
  assert "<!-- network-architecture: resnet-50-sk -->" in lines
  assert not any(line.startswith("<!-- dataset:") for line in lines)
  assert "No evaluation metrics were recorded for this export." in lines
  assert "* Stage: not recorded." in lines
  assert "87.5 %" in card  # Central-crop preprocessing above 32 px.
  assert "logits_sup" not in card
  with pytest.raises(ValueError, match=r"metadata\['metrics'\] must map"):
    model_card.render_model_card(
        {"metrics": {"top1": "high"}}, architecture=architecture,
        image_size=224, feature_dim=4096, num_classes=None)
  with pytest.raises(ValueError, match=r"metadata\['name'\] must be"):
    model_card.render_model_card(
        {"name": ["x"]}, architecture=architecture, image_size=224,
        feature_dim=4096, num_classes=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"hub_dir": ""}, "hub_dir must be a non-empty path"),
    ({"image_size": 0}, "image_size must be a positive int"),
    ({"metadata": None}, "metadata must be a dict"),
    ({"archive": "yes"}, "archive must be a bool"),
])
def test_export_hub_argument_validation(exported, tmp_path, kwargs, match):
  arguments = {"hub_dir": str(tmp_path / "m"), "image_size": IMAGE_SIZE,
               "metadata": {}}
  arguments.update(kwargs)
  hub_dir = arguments.pop("hub_dir")
  with pytest.raises(ValueError, match=match):
    hub_export.export_hub(exported["model"], hub_dir, **arguments)
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_reference_fixture_hub_module(r18_fixture_dir, tmp_path):
  reference = np.load(r18_fixture_dir / "io.npz")
  model = tf_simclr.load(
      str(r18_fixture_dir / "saved_model"))
  hub_dir = hub_export.export_hub(
      model, str(tmp_path / "r18"), image_size=32,
      metadata={"train_mode": "reference_import"}, archive=False)
  assert not os.path.exists(hub_dir + ".tar.gz")
  module = hub.load(hub_dir)
  inputs = reference["inputs"]
  np.testing.assert_allclose(module(inputs), reference["final_avg_pool"],
                             rtol=1e-4, atol=2e-5)
  outputs = module.outputs(inputs, training=False)
  for name in OUTPUT_KEYS:
    np.testing.assert_allclose(outputs[name], reference[name], rtol=1e-4,
                               atol=2e-5, err_msg=name)
  with open(hub_dir + ".md") as f:
    card = f.read()
  assert "weights imported from a SavedModel of the original" in card


def test_bad_card_metadata_is_refused_before_writing(exported, tmp_path):
  with pytest.raises(ValueError, match=r"metadata\['metrics'\] must map"):
    hub_export.export_hub(exported["model"], str(tmp_path / "m"),
                          image_size=IMAGE_SIZE,
                          metadata={"metrics": {"top1": [1]}})
  assert os.listdir(tmp_path) == []


def test_recomputing_model_exports_plain_gradients(tmp_path, caplog):
  keras.utils.set_random_seed(0)
  model = builder.build_model(
      configs.ModelConfig(width_multiplier=0.125, global_bn=False,
                          recompute_block_groups=2),
      configs.HeadConfig(num_classes=NUM_CLASSES), "finetune")
  model(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]), training=False)
  hub_dir = hub_export.export_hub(model, str(tmp_path / "hub"),
                                  image_size=IMAGE_SIZE, metadata=METADATA)
  assert [g.recompute_blocks for g in model.backbone.block_groups] == [
      True, True, False, False]
  with caplog.at_level("WARNING"):
    layer = hub.KerasLayer(hub_dir, trainable=True)
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(layer(images(3, 4), training=True))
    gradients = tape.gradient(loss, layer.trainable_weights)
  assert "custom gradients" not in caplog.text
  assert all(g is not None for g in gradients)
