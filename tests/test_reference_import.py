"""Tests for importing original-code SavedModels and checkpoints."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

import tf_simclr
from tf_simclr import configs
from tf_simclr.models import reference_import
from tf_simclr.models import builder
from tf_simclr.models import heads
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model

MANIFESTS = ("r18_cifar", "r50_1x_224", "r50_sk_224")
OUTPUT_KEYS = ("initial_conv", "initial_max_pool", "block_group1",
               "block_group2", "block_group3", "block_group4",
               "final_avg_pool", "logits_sup", "proj_head_input",
               "proj_head_output")
STEM_KERNEL = "model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel"
HEAD_PREFIX = "model/supervised_head/linear_layer/dense/"


def _strip(path):
  return path[:-len(reference_import.VARIABLE_SUFFIX)]


def _load_manifest(reference_dir, name):
  with open(reference_dir / "manifests" / f"{name}.json") as f:
    return json.load(f)


def _model_from_manifest_config(config, input_size=32):
  sk_ratio = config["sk_ratio"]
  model = builder.build_model(
      configs.ModelConfig(
          resnet_depth=config["resnet_depth"],
          width_multiplier=config["width_multiplier"],
          sk_ratio=sk_ratio,
          se_ratio=config["se_ratio"],
          stem=configs.reference_stem(config["image_size"], sk_ratio),
          shortcut=configs.reference_shortcut(sk_ratio),
          global_bn=False),
      configs.HeadConfig(num_proj_layers=config["num_proj_layers"],
                         proj_out_dim=config["proj_out_dim"],
                         num_classes=config["num_classes"]),
      "finetune")
  model(tf.zeros([1, input_size, input_size, 3]), training=False)
  return model


# ------------------------------------------------------ fixture outputs ---


def test_loaded_fixture_reproduces_reference_outputs(r18_fixture_dir):
  model = tf_simclr.load(
      r18_fixture_dir / "saved_model")
  assert isinstance(model, simclr_model.SimCLRModel)
  io = np.load(r18_fixture_dir / "io.npz")
  outputs = model(io["inputs"], training=False)
  assert sorted(outputs) == sorted(OUTPUT_KEYS)
  for key in OUTPUT_KEYS:
    assert outputs[key].shape == io[key].shape, key
    np.testing.assert_allclose(outputs[key].numpy(), io[key], atol=1e-4,
                               rtol=0, err_msg=key)
  # Not a trivially small signal: the stem conv output is O(1).
  assert np.abs(io["initial_conv"]).max() > 0.1


def test_object_graph_paths_match_manifest(r18_fixture_dir):
  saved_model = r18_fixture_dir / "saved_model"
  paths = reference_import.read_reference_object_graph(saved_model)
  manifest = json.loads((r18_fixture_dir / "manifest.json").read_text())
  assert set(paths) == {_strip(k) for k in manifest["variables"]}
  assert len(set(paths.values())) == len(paths) == 121
  reader = tf.train.load_checkpoint(str(saved_model / "variables" /
                                        "variables"))
  shapes = reader.get_variable_to_shape_map()
  for path, key in paths.items():
    expected = manifest["variables"][path + reference_import.VARIABLE_SUFFIX]
    assert shapes[key] == expected["shape"], path
  # SavedModels store variables under flat keys (SPEC §8.5), not the paths.
  assert paths[STEM_KERNEL].startswith("trainable_variables_list/")


def test_load_into_existing_model_and_report(r18_fixture_dir):
  io = np.load(r18_fixture_dir / "io.npz")
  model = _model_from_manifest_config(
      json.loads((r18_fixture_dir / "manifest.json").read_text())["config"])
  report = reference_import.load_reference_weights_into(
      model, r18_fixture_dir / "saved_model")
  assert len(report["loaded"]) == 121
  assert report["missing"] == [] and report["unused"] == []
  np.testing.assert_allclose(
      model(io["inputs"], training=False)["logits_sup"].numpy(),
      io["logits_sup"], atol=1e-4, rtol=0)


# --------------------------------------------------- training checkpoints ---


def _write_reference_training_checkpoint(saved_model, directory):
  """Rebuilds the reference object tree from a SavedModel and checkpoints it.

  A reference training checkpoint uses the structural paths as literal keys;
  recreating the tree from plain tf.Modules reproduces that layout.
  """
  reader = tf.train.load_checkpoint(str(saved_model / "variables" /
                                        "variables"))
  root = tf.Module()
  for path, key in reference_import.read_reference_object_graph(
      saved_model).items():
    node = root
    *parents, leaf = path.split("/")
    for name in parents:
      if not hasattr(node, name):
        setattr(node, name, tf.Module())
      node = getattr(node, name)
    setattr(node, leaf, tf.Variable(reader.get_tensor(key)))
  checkpoint = tf.train.Checkpoint(model=root.model,
                                   global_step=tf.Variable(7, tf.int64))
  manager = tf.train.CheckpointManager(checkpoint, str(directory), 1)
  return manager.save(checkpoint_number=7)


def test_training_checkpoint_prefix_and_directory(r18_fixture_dir, tmp_path):
  saved_model = r18_fixture_dir / "saved_model"
  prefix = _write_reference_training_checkpoint(saved_model, tmp_path)
  assert prefix.endswith("ckpt-7")
  paths = reference_import.read_reference_object_graph(prefix)
  model_paths = {p: k for p, k in paths.items() if p.startswith("model/")}
  assert set(model_paths) == set(
      reference_import.read_reference_object_graph(saved_model))
  assert model_paths[STEM_KERNEL] == (
      STEM_KERNEL + reference_import.VARIABLE_SUFFIX)
  assert "global_step" in paths
  io = np.load(r18_fixture_dir / "io.npz")
  for source in (prefix, tmp_path):
    model = reference_import.load_reference_saved_model(source)
    np.testing.assert_allclose(
        model(io["inputs"], training=False)["proj_head_output"].numpy(),
        io["proj_head_output"], atol=1e-4, rtol=0)


def test_bad_path_raises(tmp_path):
  with pytest.raises(ValueError, match="path must be"):
    reference_import.read_reference_object_graph(tmp_path / "nothing")


# ------------------------------------------------------------ manifests ---


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_maps_one_to_one_onto_model(reference_dir, name):
  manifest = _load_manifest(reference_dir, name)
  expected = {_strip(k): v for k, v in manifest["variables"].items()}
  model = _model_from_manifest_config(manifest["config"])
  pairs = reference_import.reference_variable_pairs(model)
  paths = [p for p, _ in pairs]
  assert len(paths) == len(set(paths)) == len(expected)
  assert set(paths) == set(expected)
  assert sorted(id(v) for _, v in pairs) == sorted(
      id(v) for v in model.variables)
  for path, variable in pairs:
    assert variable.shape.as_list() == expected[path]["shape"], path
    assert variable.trainable == expected[path]["trainable"], path
  assert len(model.trainable_variables) == sum(
      v["trainable"] for v in expected.values())


@pytest.mark.parametrize("name,expected", [
    ("r18_cifar", dict(resnet_depth=18, stem="cifar", shortcut="projection",
                       sk_ratio=0.0, num_classes=10)),
    ("r50_1x_224", dict(resnet_depth=50, stem="imagenet",
                        shortcut="projection", sk_ratio=0.0,
                        num_classes=1000)),
    ("r50_sk_224", dict(resnet_depth=50, stem="resnet_d", shortcut="resnet_d",
                        sk_ratio=0.0625, num_classes=1000)),
])
def test_infer_architecture_from_manifests(reference_dir, name, expected):
  manifest = _load_manifest(reference_dir, name)
  inferred = reference_import.infer_architecture(
      {k: v["shape"] for k, v in manifest["variables"].items()})
  assert inferred == dict(
      expected, width_multiplier=1, se_ratio=0.0, proj_head_mode="nonlinear",
      num_proj_layers=3, proj_out_dim=128, ft_proj_selector=0,
      has_supervised_head=True)


# ------------------------------- inference round trip on synthetic models ---


@pytest.mark.parametrize("model_kwargs,head_kwargs,train_mode", [
    (dict(resnet_depth=34, width_multiplier=0.5, se_ratio=0.25,
          stem="imagenet"), dict(num_proj_layers=2, proj_out_dim=64),
     "pretrain"),
    pytest.param(dict(resnet_depth=50, width_multiplier=2, sk_ratio=0.0625,
                      stem="resnet_d", shortcut="resnet_d"), {}, "finetune",
                 marks=pytest.mark.slow),
    pytest.param(dict(resnet_depth=50, width_multiplier=3, sk_ratio=0.0625,
                      stem="resnet_d", shortcut="resnet_d"), {}, "finetune",
                 marks=pytest.mark.slow),
    pytest.param(dict(resnet_depth=50, width_multiplier=1.0, sk_ratio=0.125,
                      stem="imagenet", shortcut="resnet_d"),
                 dict(ft_proj_selector=-1),
                 "finetune", marks=pytest.mark.slow),
    pytest.param(dict(resnet_depth=101, width_multiplier=0.25, stem="cifar"),
                 dict(num_proj_layers=1), "finetune", marks=pytest.mark.slow),
])
def test_infer_architecture_round_trip(model_kwargs, head_kwargs, train_mode):
  head_kwargs = dict(dict(num_classes=7, lineareval_while_pretraining=False),
                     **head_kwargs)
  model_config = configs.ModelConfig(**model_kwargs)
  head_config = configs.HeadConfig(**head_kwargs)
  # Graph mode: variables get shapes without allocating memory.
  with tf.Graph().as_default():
    model = builder.build_model(model_config, head_config, train_mode)
    model(tf.compat.v1.placeholder(tf.float32, [1, 32, 32, 3]),
          training=False)
    shapes = {p: v.shape.as_list()
              for p, v in reference_import.reference_variable_pairs(model)}
  inferred = reference_import.infer_architecture(shapes)
  has_head = train_mode != "pretrain"
  assert inferred == {
      "resnet_depth": model_config.resnet_depth,
      "width_multiplier": model_config.width_multiplier,
      "sk_ratio": model_config.sk_ratio,
      "se_ratio": model_config.se_ratio,
      "stem": model_config.stem,
      "shortcut": model_config.shortcut,
      "proj_head_mode": "nonlinear",
      "num_proj_layers": head_config.num_proj_layers,
      "proj_out_dim": head_config.proj_out_dim,
      "ft_proj_selector": head_config.ft_proj_selector if has_head else 0,
      "num_classes": 7 if has_head else None,
      "has_supervised_head": has_head,
  }


def test_infer_architecture_rejects_non_simclr_shapes():
  with pytest.raises(ValueError, match="stem"):
    reference_import.infer_architecture({"model/dense/kernel": [3, 4]})


# ------------------------------------------------------------ mismatches ---


def test_width_mismatch_names_key_and_both_shapes(r18_fixture_dir):
  with pytest.raises(ValueError, match=re.escape(
      f"reference key {STEM_KERNEL} has shape [3, 3, 3, 64] but tf_simclr "
      "variable simclr_model/resnet/stem/conv_0/conv2d/kernel has shape "
      "[3, 3, 3, 128]")):
    reference_import.load_reference_saved_model(
        r18_fixture_dir / "saved_model", width_multiplier=2)


@pytest.mark.parametrize("overrides,message", [
    (dict(image_size=224),
     f"reference key {STEM_KERNEL} has shape [3, 3, 3, 64] but tf_simclr "
     "variable simclr_model/resnet/stem/conv_0/conv2d/kernel has shape "
     "[7, 7, 3, 64]"),
    (dict(num_classes=100),
     f"reference key {HEAD_PREFIX}kernel has shape [512, 10] but tf_simclr "
     "variable simclr_model/head_supervised/dense/kernel has shape "
     "[512, 100]"),
    (dict(resnet_depth=34),
     "tf_simclr variable simclr_model/resnet/block_group1/block_2/conv_1/"
     "conv2d/kernel has no source: reference key model/resnet_model/"
     "block_groups/0/layers/2/conv2d_bn_layers/0/conv2d/kernel is missing"),
    (dict(num_proj_layers=2),
     "reference key model/_projection_head/linear_layers/1/dense/kernel has "
     "shape [512, 512] but tf_simclr variable "
     "simclr_model/projection_head/dense_1/kernel has shape [512, 128]"),
    (dict(depth=18), "architecture arguments must be among"),
])
def test_architecture_overrides_fail_clearly(r18_fixture_dir, overrides,
                                             message):
  with pytest.raises(ValueError, match=re.escape(message)):
    reference_import.load_reference_saved_model(
        r18_fixture_dir / "saved_model", **overrides)


def test_unused_reference_keys_and_non_strict_loading(r18_fixture_dir):
  config = json.loads((r18_fixture_dir / "manifest.json").read_text())[
      "config"]
  saved_model = r18_fixture_dir / "saved_model"
  io = np.load(r18_fixture_dir / "io.npz")
  model = builder.build_model(
      configs.ModelConfig(resnet_depth=18, width_multiplier=1.0, stem="cifar",
                          global_bn=False),
      configs.HeadConfig(num_classes=config["num_classes"],
                         lineareval_while_pretraining=False),
      "pretrain")
  with pytest.raises(ValueError, match=re.escape(
      f"reference key {HEAD_PREFIX}bias (shape [10]) has no destination")):
    reference_import.load_reference_weights_into(model, saved_model)
  report = reference_import.load_reference_weights_into(
      model, saved_model, include_supervised_head=False)
  assert report["unused"] == [] and len(report["loaded"]) == 119
  np.testing.assert_allclose(
      model(io["inputs"], training=False)["proj_head_output"].numpy(),
      io["proj_head_output"], atol=1e-4, rtol=0)

  # A new label set: keep the fresh head, load everything else.
  finetune = builder.build_model(
      configs.ModelConfig(resnet_depth=18, width_multiplier=1.0, stem="cifar",
                          global_bn=False),
      configs.HeadConfig(num_classes=3), "finetune")
  finetune(tf.zeros([1, 32, 32, 3]), training=False)
  head_before = finetune.supervised_head.dense.kernel.numpy()
  report = reference_import.load_reference_weights_into(
      finetune, saved_model, include_supervised_head=False)
  assert len(report["loaded"]) == 119
  np.testing.assert_array_equal(finetune.supervised_head.dense.kernel.numpy(),
                                head_before)
  report = reference_import.load_reference_weights_into(
      model, saved_model, strict=False)
  assert report["unused"] == [HEAD_PREFIX + "bias", HEAD_PREFIX + "kernel"]
  assert report["missing"] == []


def test_translation_requires_built_simclr_model():
  model = simclr_model.SimCLRModel(
      resnet.ResNet(18, stem="cifar"),
      heads.ProjectionHead())
  with pytest.raises(ValueError, match="built"):
    reference_import.reference_variable_pairs(model)
  with pytest.raises(ValueError, match="model must be"):
    reference_import.reference_variable_pairs(resnet.ResNet(18))


def test_load_into_model_built_under_strategy(r18_fixture_dir,
                                              two_cpu_strategy):
  config = json.loads((r18_fixture_dir / "manifest.json").read_text())[
      "config"]
  with two_cpu_strategy.scope():
    model = _model_from_manifest_config(config)
  reference_import.load_reference_weights_into(
      model, r18_fixture_dir / "saved_model")
  io = np.load(r18_fixture_dir / "io.npz")
  np.testing.assert_allclose(
      model(io["inputs"], training=False)["logits_sup"].numpy(),
      io["logits_sup"], atol=1e-4, rtol=0)
