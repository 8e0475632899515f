"""Flags -> frozen config: defaults, coupling, validation, JSON round trip."""

import dataclasses

import pytest
import tensorflow as tf
from absl import flags as absl_flags

import flags as tf_simclr_flags
from tf_simclr import configs


@pytest.fixture
def parse():
  tf_simclr_flags.define_flags()

  def _parse(*args):
    values = absl_flags.FLAGS
    values.unparse_flags()
    values(["run.py", *args])
    return tf_simclr_flags.config_from_flags(values)

  yield _parse
  absl_flags.FLAGS.unparse_flags()


def test_defaults_resolve_reference_coupling(parse):
  cfg = parse()
  assert cfg.model.stem == configs.STEM_CIFAR  # 16 px
  assert cfg.model.shortcut == configs.SHORTCUT_PROJECTION
  cfg = parse("--image_size=224", "--sk_ratio=0.0625")
  assert cfg.model.stem == configs.STEM_RESNET_D
  assert cfg.model.shortcut == configs.SHORTCUT_RESNET_D
  cfg = parse("--image_size=224")
  assert cfg.model.stem == configs.STEM_IMAGENET
  cfg = parse("--image_size=224", "--sk_ratio=0.0625", "--stem=imagenet",
              "--shortcut=projection")
  assert (cfg.model.stem, cfg.model.shortcut) == ("imagenet", "projection")


@pytest.mark.parametrize("args,message", [
    (["--resnet_depth=42"], "resnet_depth must be one of"),
    (["--width_multiplier=0"], "width_multiplier must be > 0, got 0.0"),
    (["--temperature=0"], "temperature must be > 0"),
    (["--color_jitter_strength=2"], "color_jitter_strength"),
    (["--train_steps=0", "--train_epochs=0"], "train_steps or train_epochs"),
    (["--fine_tune_after_block=2"], "only applies to --train_mode=finetune"),
    (["--fine_tune_after_block=7"], "fine_tune_after_block must be in"),
    (["--dataset=image_folder"], "needs --data_dir"),
    (["--use_tpu", "--distribution=multi_worker"], "--use_tpu conflicts"),
    (["--probe_label_fractions=0.1,abc"], "probe_label_fractions"),
    (["--probe_label_fractions=0"], "probe_label_fractions"),
    (["--train_mode=finetune"], "finetune needs --checkpoint"),
    (["--train_mode=distill"], "needs --teacher_checkpoint"),
    (["--mode=export"], "export needs --checkpoint"),
    (["--label_fraction=0.1", "--label_subset_file=ids.txt"], "exclusive"),
    (["--memory_size=16", "--nohidden_norm"], "needs --hidden_norm"),
    (["--min_crop_area=0"], "min_crop_area"),
    (["--pretrain_image_size=4"], "pretrain_image_size must be 0 or >= 8, got 4"),
    (["--train_mode=supervised", "--pretrain_image_size=24"],
     "pretrain_image_size only applies to --train_mode=pretrain"),
    (["--recompute_block_groups=5"], "recompute_block_groups must be in"),
    (["--tpu_zone=us-central1-a"],
     "--tpu_zone only applies to --use_tpu, got --tpu_zone=us-central1-a "
     "with --distribution=mirrored"),
    (["--gcp_project=p", "--distribution=multi_worker"],
     "--gcp_project only applies to --use_tpu"),
    (["--master=grpc://10.0.0.2:8470"], "--master only applies to --use_tpu"),
    (["--use_tpu", "--tpu_name=t1", "--master=grpc://10.0.0.2:8470"],
     "--tpu_name and --master are exclusive"),
    (["--use_tpu", "--master=10.0.0.2:8470"],
     "--master must be a grpc://HOST:PORT address, got '10.0.0.2:8470'"),
])
def test_invalid_flags_raise_value_error_naming_the_flag(parse, args, message):
  with pytest.raises(ValueError, match=message):
    parse(*args)


def test_finetune_uses_the_papers_recipe_unless_flags_are_given(parse):
  cfg = parse("--train_mode=finetune", "--checkpoint=/tmp/x")
  assert (cfg.optimizer.warmup_epochs, cfg.optimizer.weight_decay,
          cfg.optimizer.learning_rate_scaling) == (0.0, 0.0, "sqrt")
  cfg = parse("--train_mode=finetune", "--checkpoint=/tmp/x",
              "--weight_decay=1e-5")
  assert cfg.optimizer.weight_decay == 1e-5
  assert parse().optimizer.warmup_epochs == 2.0  # pretraining keeps its own


def test_supervised_stages_derive_batch_and_length_unless_flags_are_given(
    parse):
  cfg = parse("--train_mode=finetune", "--checkpoint=/tmp/x")
  assert (cfg.train.train_batch_size, cfg.train.min_train_steps,
          cfg.head.ft_proj_selector) == (0, 300, 1)
  cfg = parse("--train_mode=supervised")
  assert (cfg.train.train_batch_size, cfg.train.min_train_steps,
          cfg.head.ft_proj_selector) == (0, 300, 0)
  # The paper's ImageNet flags give batch and length: no minimum applies.
  cfg = parse("--train_mode=finetune", "--checkpoint=/tmp/x",
              "--train_batch_size=1024", "--train_epochs=60",
              "--ft_proj_selector=0")
  assert (cfg.train.train_batch_size, cfg.train.min_train_steps,
          cfg.head.ft_proj_selector) == (1024, 0, 0)
  assert parse("--train_mode=distill", "--teacher_checkpoint=/x",
               "--train_steps=5").train.min_train_steps == 0
  cfg = parse()  # pretraining keeps the flag defaults
  assert (cfg.train.train_batch_size, cfg.train.min_train_steps) == (256, 0)


def test_digits_recipe_applies_to_digits_only(parse):
  cfg = parse()
  assert not cfg.data.horizontal_flip
  assert cfg.data.finetune_min_crop_area == 0.4
  assert cfg.train.knn_eval
  assert cfg.train.probe_label_fractions == (0.01, 0.1, 1.0)
  assert cfg.train.train_epochs == 60.0
  assert parse("--horizontal_flip").data.horizontal_flip
  assert parse("--train_mode=supervised").train.probe_label_fractions == ()
  cfg = parse("--dataset=cifar10")
  assert cfg.data.horizontal_flip and not cfg.train.knn_eval
  assert cfg.data.finetune_min_crop_area == 0.08
  assert cfg.train.probe_label_fractions == ()


def test_config_json_round_trip(parse):
  cfg = parse("--probe_label_fractions=0.01,0.1", "--resnet_depth=50")
  restored = configs.ExperimentConfig.from_json(cfg.to_json())
  assert restored == cfg
  assert restored.train.probe_label_fractions == (0.01, 0.1)


def test_config_is_frozen():
  cfg = configs.ExperimentConfig()
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.model.resnet_depth = 50  # type: ignore[misc]


def test_unknown_config_key_is_rejected():
  with pytest.raises(ValueError, match="unknown keys"):
    configs.ExperimentConfig.from_dict({"model": {"depth": 50}})


def test_tpu_flags_reach_the_config_and_the_cluster_resolver(parse,
                                                            monkeypatch):
  cfg = parse("--use_tpu", "--tpu_name=pod-1", "--tpu_zone=europe-west4-a",
              "--gcp_project=proj-7")
  t = cfg.train
  assert (t.distribution, t.tpu_name, t.tpu_zone, t.gcp_project, t.master) == (
      "tpu", "pod-1", "europe-west4-a", "proj-7", None)
  assert configs.ExperimentConfig.from_json(cfg.to_json()) == cfg
  by_address = parse("--distribution=tpu", "--master=grpc://10.0.0.2:8470")
  assert by_address.train.master == "grpc://10.0.0.2:8470"

  # No TPU here: record what the resolver is asked for, then stop.
  from tf_simclr.training import strategy as strategy_lib
  calls = []

  class _Stop(Exception):
    pass

  def resolver(**kwargs):
    calls.append(kwargs)
    raise _Stop

  monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver",
                      resolver)
  for c in (cfg, by_address):
    with pytest.raises(_Stop):
      strategy_lib.build_strategy(
          c.train.distribution, c.train.tpu_name, tpu_zone=c.train.tpu_zone,
          gcp_project=c.train.gcp_project, master=c.train.master)
  assert calls == [
      {"tpu": "pod-1", "zone": "europe-west4-a", "project": "proj-7"},
      {"tpu": "grpc://10.0.0.2:8470", "zone": None, "project": None}]
  with pytest.raises(ValueError, match="tpu_name or master, not both"):
    strategy_lib.build_strategy("tpu", "t1", master="grpc://h:1")
