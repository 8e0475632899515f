"""Turns parsed absl flags into a frozen, validated ExperimentConfig."""

from __future__ import annotations

from typing import Any

from tf_simclr import configs

_SUPPORTED_DEPTHS = (18, 34, 50, 101, 152, 200)


def _parse_fractions(text: str) -> tuple[float, ...]:
  if not text.strip():
    return ()
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    raise ValueError(
        f"probe_label_fractions must be comma-separated numbers, got {text!r}"
    ) from None
  for v in values:
    if not 0.0 < v <= 1.0:
      raise ValueError(
          f"probe_label_fractions values must be in (0, 1], got {v}")
  return values


# The paper's fine-tuning recipe (no warm-up, no weight decay, sqrt-scaled
# learning rate, fine-tuning from the first projection layer), used for every
# flag of a supervised stage the user did not set explicitly. Two values scale
# it down to small labelled sets: the batch is derived from the training set
# (0; `optimizer.small_set_batch_size`: the largest power of two not above
# half the set, 16 to 256), so the sqrt-scaled learning rate follows it, and
# an epoch-derived run is at least `min_train_steps` long. On ImageNet-sized
# sets this changes nothing unless the flags leave the batch to be derived
# (256) -- the paper's flags give it explicitly.
_SUPERVISED_STAGE = {"warmup_epochs": 0.0, "weight_decay": 0.0,
                     "learning_rate_scaling": "sqrt", "learning_rate": 0.05,
                     "train_epochs": 30.0, "train_batch_size": 0,
                     "min_train_steps": 300}
STAGE_DEFAULTS = {
    "finetune": {**_SUPERVISED_STAGE, "ft_proj_selector": 1},
    "supervised": _SUPERVISED_STAGE,
    "distill": _SUPERVISED_STAGE,
}
# Flags that, set explicitly, fix the run's length: the minimum then stays 0.
_LENGTH_FLAGS = ("train_epochs", "train_steps")


# The digits_cpu recipe: what `--dataset=digits` changes on top of the flag
# defaults, for every stage ("all") and for one stage. Measured choices:
# README, "Defaults versus the paper".
DATASET_DEFAULTS = {
    "digits": {
        # A mirrored digit is another digit or none; crops of less than 40 %
        # of an 8x8 digit lose it (fine-tuning at 10 % of the labels: 0.905
        # with 0.4, 0.877 with the reference's 0.08).
        "all": {"horizontal_flip": False, "finetune_min_crop_area": 0.4},
        # The main command reports the frozen-feature probes next to their
        # baselines (random-init encoder, raw pixels) and k-NN.
        # 60 epochs (338 steps at batch 256) instead of 20: linear eval 0.894
        # -> 0.942, k-NN 0.864 -> 0.880, 1 % probe 0.599 -> 0.671.
        "pretrain": {"train_epochs": 60.0, "knn_eval": True,
                     "probe_label_fractions": "0.01,0.1,1"},
    },
}


def _apply_stage_defaults(f: Any) -> None:
  recipe = DATASET_DEFAULTS.get(f.dataset, {})
  for defaults in (recipe.get("all", {}), recipe.get(f.train_mode, {}),
                   STAGE_DEFAULTS.get(f.train_mode, {})):
    for name, value in defaults.items():
      if name == "min_train_steps" and any(f[n].present
                                           for n in _LENGTH_FLAGS):
        continue
      if not f[name].present:
        setattr(f, name, value)


def config_from_flags(flag_values: Any) -> configs.ExperimentConfig:
  """Builds the experiment config from parsed flags (`absl.flags.FLAGS`).

  The number of classes is filled in later from the data source.

  Raises:
    ValueError: on an invalid value or a conflicting combination of flags.
  """
  f = flag_values
  stem = (configs.reference_stem(f.image_size, f.sk_ratio)
          if f.stem == "auto" else f.stem)
  shortcut = (configs.reference_shortcut(f.sk_ratio)
              if f.shortcut == "auto" else f.shortcut)
  _apply_stage_defaults(f)
  if f.use_tpu and f.distribution not in ("mirrored", "tpu"):
    raise ValueError(
        f"--use_tpu conflicts with --distribution={f.distribution}")
  distribution = "tpu" if f.use_tpu else f.distribution
  cfg = configs.ExperimentConfig(
      model=configs.ModelConfig(
          resnet_depth=f.resnet_depth,
          width_multiplier=f.width_multiplier,
          sk_ratio=f.sk_ratio,
          se_ratio=f.se_ratio,
          stem=stem,
          shortcut=shortcut,
          global_bn=f.global_bn,
          batch_norm_decay=f.batch_norm_decay,
          fused_batch_norm=f.fused_batch_norm,
          recompute_block_groups=f.recompute_block_groups,
      ),
      head=configs.HeadConfig(
          proj_head_mode=f.proj_head_mode,
          num_proj_layers=f.num_proj_layers,
          proj_out_dim=f.proj_out_dim,
          ft_proj_selector=f.ft_proj_selector,
          lineareval_while_pretraining=f.lineareval_while_pretraining,
          zero_init_logits_layer=f.zero_init_logits_layer,
      ),
      loss=configs.LossConfig(temperature=f.temperature,
                              hidden_norm=f.hidden_norm,
                              memory_size=f.memory_size,
                              memory_momentum=f.memory_momentum),
      data=configs.DataConfig(
          dataset=f.dataset,
          data_dir=f.data_dir,
          train_split=f.train_split,
          eval_split=f.eval_split,
          image_size=f.image_size,
          pretrain_image_size=f.pretrain_image_size,
          color_jitter_strength=f.color_jitter_strength,
          min_crop_area=f.min_crop_area,
          finetune_min_crop_area=f.finetune_min_crop_area,
          horizontal_flip=f.horizontal_flip,
          use_blur=f.use_blur,
          cache_dataset=f.cache_dataset,
          skip_corrupt_images=f.skip_corrupt_images,
          tfds_download=f.tfds_download,
          seed=f.seed,
      ),
      optimizer=configs.OptimizerConfig(
          optimizer=f.optimizer,
          learning_rate=f.learning_rate,
          learning_rate_scaling=f.learning_rate_scaling,
          warmup_epochs=f.warmup_epochs,
          momentum=f.momentum,
          weight_decay=f.weight_decay,
      ),
      train=configs.TrainConfig(
          train_mode=f.train_mode,
          mode=f.mode,
          model_dir=f.model_dir,
          train_batch_size=f.train_batch_size,
          train_epochs=f.train_epochs,
          train_steps=f.train_steps,
          min_train_steps=f.min_train_steps,
          eval_batch_size=f.eval_batch_size,
          eval_steps=f.eval_steps,
          steps_per_loop=f.steps_per_loop,
          checkpoint_epochs=f.checkpoint_epochs,
          checkpoint_steps=f.checkpoint_steps,
          keep_checkpoint_max=f.keep_checkpoint_max,
          checkpoint=f.checkpoint,
          fine_tune_after_block=f.fine_tune_after_block,
          distribution=distribution,
          use_tpu=f.use_tpu,
          tpu_name=f.tpu_name,
          tpu_zone=f.tpu_zone,
          gcp_project=f.gcp_project,
          master=f.master,
          jit_compile=f.jit_compile,
          precision=f.precision,
          knn_eval=f.knn_eval,
          knn_k=f.knn_k,
          knn_temperature=f.knn_temperature,
          log_every_steps=f.log_every_steps,
          label_fraction=f.label_fraction,
          label_subset_file=f.label_subset_file,
          teacher_checkpoint=f.teacher_checkpoint,
          unlabelled_split=f.unlabelled_split,
          distill_temperature=f.distill_temperature,
          distill_label_weight=f.distill_label_weight,
          distill_temperature_squared=f.distill_temperature_squared,
          probe_label_fractions=_parse_fractions(f.probe_label_fractions),
          seed=f.seed,
      ),
      export=configs.ExportConfig(
          export_dir=f.export_dir,
          hub_export_dir=f.hub_export_dir,
          keep_exports=f.keep_exports,
          export_at_end=f.export_at_end,
      ),
  )
  validate(cfg)
  return cfg


def validate(cfg: configs.ExperimentConfig) -> None:
  """Rejects invalid values and conflicting flags before any long work."""
  m, h, d, o, t = cfg.model, cfg.head, cfg.data, cfg.optimizer, cfg.train

  def need(condition: bool, message: str) -> None:
    if not condition:
      raise ValueError(message)

  need(m.resnet_depth in _SUPPORTED_DEPTHS,
       f"resnet_depth must be one of {_SUPPORTED_DEPTHS}, got {m.resnet_depth}")
  need(m.width_multiplier > 0,
       f"width_multiplier must be > 0, got {m.width_multiplier}")
  need(m.sk_ratio >= 0, f"sk_ratio must be >= 0, got {m.sk_ratio}")
  need(m.se_ratio >= 0, f"se_ratio must be >= 0, got {m.se_ratio}")
  need(0 <= m.recompute_block_groups <= 4,
       f"recompute_block_groups must be in [0, 4], got "
       f"{m.recompute_block_groups}")
  need(0.0 <= m.batch_norm_decay < 1.0,
       f"batch_norm_decay must be in [0, 1), got {m.batch_norm_decay}")
  need(h.num_proj_layers >= 1,
       f"num_proj_layers must be >= 1, got {h.num_proj_layers}")
  need(h.proj_out_dim >= 1, f"proj_out_dim must be >= 1, got {h.proj_out_dim}")
  need(d.image_size >= 8, f"image_size must be >= 8, got {d.image_size}")
  need(d.pretrain_image_size == 0 or d.pretrain_image_size >= 8,
       f"pretrain_image_size must be 0 or >= 8, got {d.pretrain_image_size}")
  need(not (d.pretrain_image_size and t.train_mode != "pretrain"),
       "pretrain_image_size only applies to --train_mode=pretrain, got "
       f"{d.pretrain_image_size} with --train_mode={t.train_mode}")
  need(0.0 <= d.color_jitter_strength <= 1.25,
       "color_jitter_strength must be in [0, 1.25], got "
       f"{d.color_jitter_strength}")
  need(0.0 < d.min_crop_area <= 1.0,
       f"min_crop_area must be in (0, 1], got {d.min_crop_area}")
  need(0.0 < d.finetune_min_crop_area <= 1.0,
       "finetune_min_crop_area must be in (0, 1], got "
       f"{d.finetune_min_crop_area}")
  need(cfg.loss.temperature > 0,
       f"temperature must be > 0, got {cfg.loss.temperature}")
  need(cfg.loss.memory_size >= 0,
       f"memory_size must be >= 0, got {cfg.loss.memory_size}")
  need(0.0 <= cfg.loss.memory_momentum <= 1.0,
       f"memory_momentum must be in [0, 1], got {cfg.loss.memory_momentum}")
  need(not (cfg.loss.memory_size and not cfg.loss.hidden_norm),
       "memory_size > 0 needs --hidden_norm (queued keys are L2-normalised), "
       "got --nohidden_norm")
  need(not (cfg.loss.memory_size and h.proj_head_mode == "none"),
       "memory_size > 0 needs a projection head, got --proj_head_mode=none")
  need(o.learning_rate >= 0,
       f"learning_rate must be >= 0, got {o.learning_rate}")
  need(o.warmup_epochs >= 0,
       f"warmup_epochs must be >= 0, got {o.warmup_epochs}")
  need(o.weight_decay >= 0, f"weight_decay must be >= 0, got {o.weight_decay}")
  need(t.train_batch_size >= 0,
       f"train_batch_size must be >= 0 (0 = derive), got "
       f"{t.train_batch_size}")
  need(t.min_train_steps >= 0,
       f"min_train_steps must be >= 0, got {t.min_train_steps}")
  need(t.eval_batch_size >= 1,
       f"eval_batch_size must be >= 1, got {t.eval_batch_size}")
  for name in ("tpu_zone", "gcp_project", "master"):
    need(getattr(t, name) is None or t.distribution == "tpu",
         f"--{name} only applies to --use_tpu, got --{name}="
         f"{getattr(t, name)} with --distribution={t.distribution}")
  need(not (t.tpu_name and t.master),
       f"--tpu_name and --master are exclusive, got {t.tpu_name!r} and "
       f"{t.master!r}")
  need(t.master is None or t.master.startswith("grpc://"),
       f"--master must be a grpc://HOST:PORT address, got {t.master!r}")
  need(t.train_steps > 0 or t.train_epochs > 0,
       "one of train_steps or train_epochs must be > 0, got "
       f"train_steps={t.train_steps}, train_epochs={t.train_epochs}")
  need(t.train_steps >= 0, f"train_steps must be >= 0, got {t.train_steps}")
  need(t.checkpoint_steps > 0 or t.checkpoint_epochs > 0,
       "one of checkpoint_steps or checkpoint_epochs must be > 0")
  need(t.keep_checkpoint_max >= 1,
       f"keep_checkpoint_max must be >= 1, got {t.keep_checkpoint_max}")
  need(-1 <= t.fine_tune_after_block <= 4,
       f"fine_tune_after_block must be in [-1, 4], got "
       f"{t.fine_tune_after_block}")
  need(not (t.train_mode == "pretrain" and t.fine_tune_after_block != -1
            and t.mode != "eval"),
       "fine_tune_after_block only applies to --train_mode=finetune, got "
       f"{t.fine_tune_after_block} with --train_mode={t.train_mode}")
  need(0.0 <= t.label_fraction <= 1.0,
       f"label_fraction must be in [0, 1], got {t.label_fraction}")
  need(not (t.label_fraction and t.label_subset_file),
       "--label_fraction and --label_subset_file are exclusive, got "
       f"{t.label_fraction} and {t.label_subset_file!r}")
  need(not (t.train_mode == "finetune" and t.mode != "eval"
            and not t.checkpoint),
       "--train_mode=finetune needs --checkpoint=PATH (a pretraining run or "
       "an original-code SavedModel)")
  need(not (t.train_mode == "distill" and t.mode != "eval"
            and not t.teacher_checkpoint),
       "--train_mode=distill needs --teacher_checkpoint=PATH")
  need(cfg.train.distill_temperature > 0,
       f"distill_temperature must be > 0, got {t.distill_temperature}")
  need(0.0 <= t.distill_label_weight <= 1.0,
       f"distill_label_weight must be in [0, 1], got {t.distill_label_weight}")
  need(not (t.mode == "export" and not t.checkpoint),
       "--mode=export needs --checkpoint=PATH (a tf_simclr checkpoint or an "
       "original-code SavedModel)")
  need(not (d.dataset == "image_folder" and not d.data_dir),
       "--dataset=image_folder needs --data_dir=ROOT (one sub-folder per "
       "split, one per class)")
