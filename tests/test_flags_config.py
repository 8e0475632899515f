"""Flags -> frozen config: defaults, coupling, validation, JSON round trip."""

import dataclasses

import pytest
import tensorflow as tf
from absl import flags as absl_flags

import flags as tf_simclr_flags
from tf_simclr import configs
from tf_simclr import presets


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


def test_digits_recipe_is_the_default_preset_for_any_dataset(parse):
  cfg = parse()
  assert not cfg.data.horizontal_flip
  assert cfg.data.finetune_min_crop_area == 0.7
  assert cfg.train.knn_eval
  assert cfg.train.probe_label_fractions == (0.01, 0.1, 1.0)
  assert cfg.train.train_epochs == 60.0
  assert parse("--horizontal_flip").data.horizontal_flip
  assert parse("--train_mode=supervised").train.probe_label_fractions == ()
  # Another dataset keeps the preset's values (no per-dataset tables) and
  # says which preset applies.
  cfg = parse("--dataset=cifar10")
  assert not cfg.data.horizontal_flip and cfg.train.knn_eval
  assert cfg.data.finetune_min_crop_area == 0.7
  assert presets.dataset_note(cfg) == (
      "note: preset digits_cpu (made for --dataset=digits) applies to "
      "--dataset=cifar10; its values are kept where no flag is given "
      "(--preset=digits_cpu|cifar10_simclr|imagenet_simclrv2)")
  assert presets.dataset_note(parse()) is None
  assert presets.dataset_note(parse("--preset=cifar10_simclr")) is None


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


# ------------------------------------------------------------------ presets ---


def test_dataclass_defaults_are_the_default_preset():
  assert presets.DEFAULT == "digits_cpu"
  assert configs.ExperimentConfig() == presets.get("digits_cpu").config()
  assert configs.ExperimentConfig().preset == "digits_cpu"
  assert configs.ExperimentConfig().overrides == {}


def test_flags_without_values_give_the_default_preset(parse):
  assert parse() == configs.ExperimentConfig()
  for mode in ("finetune", "distill"):
    args = (f"--train_mode={mode}", "--checkpoint=/c",
            "--teacher_checkpoint=/t")
    assert parse(*args) == presets.get("digits_cpu").config(
        mode, checkpoint="/c", teacher_checkpoint="/t")


@pytest.mark.parametrize("name", ["digits_cpu", "cifar10_simclr",
                                  "imagenet_simclrv2"])
@pytest.mark.parametrize("mode", configs.TRAIN_MODES)
def test_every_preset_and_stage_round_trips_through_config_json(name, mode):
  cfg = presets.get(name).config(mode, model_dir="ram://run", seed=3)
  path = f"ram://presets/{name}/{mode}/config.json"
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(cfg.to_json())
  with tf.io.gfile.GFile(path) as f:
    restored = configs.ExperimentConfig.from_json(f.read())
  assert restored == cfg
  assert (restored.preset, restored.overrides) == (
      name, {"model_dir": "ram://run", "seed": 3})
  assert (restored.data.seed, restored.train.seed) == (3, 3)


def test_preset_values_of_the_original_recipes():
  c = presets.get("cifar10_simclr").config()
  assert (c.data.dataset, c.data.image_size, c.model.resnet_depth,
          c.model.width_multiplier, c.model.stem) == ("cifar10", 32, 18, 1.0,
                                                      "cifar")
  assert (c.train.train_batch_size, c.train.train_epochs,
          c.optimizer.learning_rate, c.optimizer.learning_rate_scaling,
          c.optimizer.weight_decay, c.loss.temperature) == (
              512, 1000.0, 1.0, "linear", 1e-4, 0.5)
  assert (c.data.use_blur, c.data.color_jitter_strength,
          c.data.min_crop_area, c.data.horizontal_flip) == (False, 0.5, 0.08,
                                                            True)
  assert not c.train.knn_eval and c.train.probe_label_fractions == ()
  f = presets.get("cifar10_simclr").config("finetune", checkpoint="/p")
  assert (f.train.fine_tune_after_block, f.head.zero_init_logits_layer,
          f.model.global_bn, f.optimizer.optimizer, f.optimizer.learning_rate,
          f.optimizer.weight_decay, f.optimizer.warmup_epochs,
          f.train.train_epochs, f.train.train_batch_size) == (
              4, True, False, "momentum", 0.1, 0.0, 0.0, 100.0, 512)
  i = presets.get("imagenet_simclrv2").config()
  assert (i.data.dataset, i.data.image_size, i.data.eval_split,
          i.model.resnet_depth, i.model.sk_ratio, i.model.stem,
          i.model.shortcut, i.head.num_proj_layers, i.model.global_bn) == (
              "imagenet2012", 224, "validation", 50, 0.0625, "resnet_d",
              "resnet_d", 3, True)
  assert (i.train.train_batch_size, i.train.train_epochs,
          i.optimizer.optimizer, i.optimizer.learning_rate,
          i.optimizer.learning_rate_scaling, i.loss.temperature,
          i.data.use_blur) == (4096, 800.0, "lars", 0.075, "sqrt", 0.1, True)
  f = presets.get("imagenet_simclrv2").config("finetune")
  assert (f.data.dataset, f.head.ft_proj_selector, f.train.train_batch_size,
          f.optimizer.learning_rate * 1024 ** 0.5, f.optimizer.warmup_epochs,
          f.optimizer.weight_decay, f.train.train_epochs) == (
              "imagenet2012_subset/1pct", 1, 1024, 0.16, 0.0, 0.0, 60.0)
  d = presets.get("imagenet_simclrv2").config("distill")
  assert (d.train.distill_temperature, d.train.distill_label_weight,
          d.train.train_epochs, d.data.dataset) == (1.0, 0.0, 400.0,
                                                    "imagenet2012")


def test_flags_given_explicitly_override_the_preset(parse):
  cfg = parse("--preset=cifar10_simclr", "--temperature=0.3",
              "--train_steps=7")
  assert (cfg.loss.temperature, cfg.train.train_steps,
          cfg.train.train_batch_size) == (0.3, 7, 512)
  assert cfg.preset == "cifar10_simclr"
  assert cfg.overrides == {"temperature": 0.3, "train_steps": 7}
  # A flag given with the preset's own value is still recorded.
  assert parse("--preset=cifar10_simclr",
               "--image_size=32").overrides == {"image_size": 32}
  # The stem follows the overridden size, as --stem=auto always did.
  assert parse("--preset=cifar10_simclr",
               "--image_size=64").model.stem == "imagenet"


def test_an_explicit_length_drops_the_stage_minimum():
  p = presets.get("digits_cpu")
  assert p.config("finetune").train.min_train_steps == 300
  assert p.config("finetune", train_epochs=5.0).train.min_train_steps == 0
  assert p.config("finetune", train_steps=5).train.min_train_steps == 0
  assert p.config("finetune", train_steps=5,
                  min_train_steps=9).train.min_train_steps == 9


def test_unknown_presets_and_overrides_are_named():
  with pytest.raises(ValueError, match=r"unknown preset 'cifar'; known: "
                     r"\('digits_cpu', 'cifar10_simclr', 'imagenet_simclrv2'\)"):
    presets.get("cifar")
  with pytest.raises(ValueError, match=r"unknown override\(s\) \['depth'\]"):
    presets.get("digits_cpu").config(depth=50)
  with pytest.raises(ValueError, match="train_mode must be one of"):
    presets.get("digits_cpu").config("linear")


@pytest.mark.parametrize("build,message", [
    (lambda: configs.ModelConfig(width_multiplier=0),
     "width_multiplier must be > 0, got 0"),
    (lambda: configs.ModelConfig(stem="auto"), "stem must be one of"),
    (lambda: configs.OptimizerConfig(optimizer="sgd"),
     "optimizer must be one of .* got 'sgd'"),
    (lambda: configs.TrainConfig(probe_label_fractions=(0.0,)),
     r"probe_label_fractions values must be in \(0, 1\], got 0.0"),
    (lambda: configs.ExperimentConfig(
        data=configs.DataConfig(pretrain_image_size=12),
        train=configs.TrainConfig(train_mode="distill")),
     "pretrain_image_size only applies"),
    (lambda: presets.get("digits_cpu").config(temperature=-1.0),
     "temperature must be > 0, got -1.0"),
    (lambda: presets.get("digits_cpu").config("finetune").validate(),
     "finetune needs --checkpoint"),
])
def test_the_library_validates_configs(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_use_tpu_selects_the_tpu_strategy_in_the_config():
  assert configs.TrainConfig(use_tpu=True).distribution == "tpu"
  assert configs.TrainConfig(use_tpu=True,
                             distribution="tpu").distribution == "tpu"


def test_run_validates_then_says_which_preset_applies(monkeypatch):
  import tf_simclr
  from tf_simclr.training import experiment
  calls = []

  def run_experiment(cfg, print_fn):
    calls.append(cfg)
    return {"global_step": 0}

  monkeypatch.setattr(experiment, "run_experiment", run_experiment)
  assert tf_simclr.ExperimentConfig is configs.ExperimentConfig
  cfg = tf_simclr.presets.get("digits_cpu").config(dataset="mnist")
  lines = []
  assert tf_simclr.run(cfg, print_fn=lines.append) == {"global_step": 0}
  assert calls == [cfg]
  assert lines == [presets.dataset_note(cfg)] and "mnist" in lines[0]
  with pytest.raises(ValueError, match="finetune needs --checkpoint"):
    tf_simclr.run(presets.get("digits_cpu").config("finetune"))
  with pytest.raises(ValueError, match="config must be a "
                     "tf_simclr.ExperimentConfig, got dict"):
    tf_simclr.run({})
  assert len(calls) == 1


def test_helpfull_shows_the_chosen_presets_stage_values_and_exits_0():
  import subprocess
  import sys
  from conftest import REPO_ROOT
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / "run.py"), "--preset=cifar10_simclr",
       "--train_mode=finetune", "--helpfull"],
      capture_output=True, text=True, timeout=120, cwd=str(REPO_ROOT))
  assert result.returncode == 0, result.stderr
  help_of = {}
  for block in result.stdout.split("\n  --")[1:]:
    name = block.split(":", 1)[0]
    help_of[name] = block
  assert "(default: 'momentum')" in help_of["optimizer"]
  assert "(default: '4')" in help_of["fine_tune_after_block"]
  assert "(default: 'cifar10_simclr')" in help_of["preset"]
  assert "(default: 'auto')" in help_of["stem"]
