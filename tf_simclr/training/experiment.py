"""One experiment from a resolved config: train, evaluate, report.

`run.py` turns flags into an `ExperimentConfig` and calls `run_experiment`;
everything here takes that config explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr import paths
from tf_simclr.data import pipelines
from tf_simclr.data import sources
from tf_simclr.data import subsets
from tf_simclr.models import builder
from tf_simclr.models import loading
from tf_simclr.models import memory_bank
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model
from tf_simclr.training import checkpoints
from tf_simclr.training import common
from tf_simclr.training import distill
from tf_simclr.training import evaluation
from tf_simclr.training import finetune
from tf_simclr.training import loop as loop_lib
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision
from tf_simclr.training import pretrain
from tf_simclr.training import strategy as strategy_lib

MOMENTUM_ENCODER = "momentum_encoder"
NEGATIVE_QUEUE = "negative_queue"
RESULT_FILE = "result.json"
CONFIG_FILE = loading.CONFIG_FILE  # Written here, read by the loader.


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Step counts derived from the config and the dataset size."""
  num_train_examples: int
  total_steps: int
  warmup_steps: int
  epoch_steps: int
  checkpoint_steps: int
  steps_per_loop: int


def compute_schedule(cfg: configs.ExperimentConfig,
                     num_train_examples: int,
                     warn: Callable[[str], None] = print) -> Schedule:
  """Training lengths; `train_steps` > 0 wins over `train_epochs` (SPEC §4.4).

  An epoch-derived length is raised to `min_train_steps`; a warm-up as long
  as the run is clipped to end one step before it (with a warning).
  """
  t, o = cfg.train, cfg.optimizer
  batch = t.train_batch_size
  total = optimizer_lib.total_train_steps(num_train_examples, batch,
                                          t.train_epochs, t.train_steps)
  if not t.train_steps and total < t.min_train_steps:
    total = t.min_train_steps
  warmup = optimizer_lib.warmup_steps(o.warmup_epochs, num_train_examples,
                                      batch)
  if warmup >= total:
    # The original code just ends such a run inside its warm-up; a smoke run
    # of a few steps should not need a hand-shortened warm-up either.
    clipped = total - 1
    warn(f"warning: warmup_epochs={o.warmup_epochs} gives {warmup} warm-up "
         f"steps for a {total}-step run; warming up for {clipped} instead")
    warmup = clipped
  epoch = optimizer_lib.epoch_steps(num_train_examples, batch)
  period = t.checkpoint_steps or max(1, int(round(t.checkpoint_epochs * epoch)))
  per_loop = t.steps_per_loop or min(period, 50)
  return Schedule(num_train_examples, total, warmup, epoch, period, per_loop)


def resolve_batch_size(cfg: configs.ExperimentConfig, num_train_examples: int,
                       replicas: int) -> configs.ExperimentConfig:
  """`cfg` with train_batch_size 0 ("derive") replaced by the derived batch."""
  if cfg.train.train_batch_size:
    return cfg
  batch = optimizer_lib.small_set_batch_size(num_train_examples, replicas)
  return dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, train_batch_size=batch))


def _check_writable(directory: str) -> None:
  # A probe file, written and deleted before training, turns a read-only
  # directory or a bucket without write permission into an error now rather
  # than at the first checkpoint.
  probe = os.path.join(directory, f".write_probe-{uuid.uuid4().hex[:12]}")
  try:
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("")
      f.flush()
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    raise ValueError(
        f"model_dir {directory!r} is not writable: {type(e).__name__} "
        f"{e}".rstrip()) from None


def _checkpoint_bytes_estimate(model: keras.Model, extra: dict) -> int:
  """Bytes of one checkpoint: weights, up to two optimizer slots each, extras."""
  model_bytes = sum(v.shape.num_elements() * v.dtype.size
                    for v in model.variables)
  extra_bytes = sum(v.shape.num_elements() * v.dtype.size
                    for obj in extra.values() for v in obj.variables)
  return 3 * model_bytes + extra_bytes


def _check_free_space(directory: str, needed_bytes: int) -> None:
  """Fails before training when model_dir cannot hold two checkpoints.

  Two: a new checkpoint is complete on disk before the oldest is deleted.
  Object stores (gs://, ...) have no free space to ask about, so only local
  directories are checked.
  """
  local = paths.local_path(directory)
  if local is None:
    return
  free = shutil.disk_usage(local).free
  if free < 2 * needed_bytes:
    raise ValueError(
        f"model_dir {directory!r} has {free / 2**20:.1f} MiB free but two "
        f"checkpoints of this model need about {2 * needed_bytes / 2**20:.1f} "
        "MiB; free some space or choose another model_dir")


def _worker_temp_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  resolver = strategy.cluster_resolver
  return os.path.join(model_dir,
                      f"worker_temp_{resolver.task_type}_{resolver.task_id}")


def _write_json(path: str, payload: dict) -> None:
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(payload, indent=2, sort_keys=True))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def build_model(cfg: configs.ExperimentConfig, replicas: int) -> keras.Model:
  """The stage's SimCLRModel, built (variables created) at the config's size."""
  # Synchronised BN across one replica only adds collectives.
  model_cfg = dataclasses.replace(
      cfg.model, global_bn=cfg.model.global_bn and replicas > 1)
  frozen = (cfg.train.fine_tune_after_block
            if cfg.train.train_mode == "finetune" else -1)
  model = builder.build_model(model_cfg, cfg.head, cfg.train.train_mode,
                              frozen_through_block=frozen)
  size = cfg.data.image_size
  model(tf.zeros([1, size, size, 3]), training=False)
  return model


def build_optimizer(cfg: configs.ExperimentConfig, schedule: Schedule
                    ) -> keras.optimizers.legacy.Optimizer:
  """The configured optimizer on the warm-up + cosine schedule."""
  o = cfg.optimizer
  learning_rate = optimizer_lib.build_learning_rate_schedule(
      o.learning_rate, o.learning_rate_scaling, cfg.train.train_batch_size,
      schedule.warmup_steps, schedule.total_steps)
  return optimizer_lib.build_optimizer(
      o.optimizer, learning_rate, momentum=o.momentum,
      weight_decay=o.weight_decay, eeta=o.lars_eeta)


def build_memory_bank(cfg: configs.ExperimentConfig, model: keras.Model,
                       replicas: int) -> dict:
  """Momentum encoder + queue when memory_size > 0 (checkpointed objects)."""
  if not cfg.loss.memory_size:
    return {}
  twin_cfg = dataclasses.replace(
      cfg, head=dataclasses.replace(cfg.head,
                                    lineareval_while_pretraining=False))
  encoder = memory_bank.MomentumEncoder(build_model(twin_cfg, replicas))
  encoder.initialize_from(model)
  queue = memory_bank.NegativeQueue(cfg.loss.memory_size,
                                    cfg.head.proj_out_dim)
  return {MOMENTUM_ENCODER: encoder, NEGATIVE_QUEUE: queue}


def _view_grid_summary(source, cfg: configs.ExperimentConfig
                       ) -> Callable[[int], None]:
  """Writes a grid of augmented view pairs now and then."""
  preview = pipelines.build_pretrain_dataset(
      source, cfg.data.train_split, per_replica_batch_size=8,
      image_size=cfg.data.pretrain_view_size,
      color_jitter_strength=cfg.data.color_jitter_strength,
      min_crop_area=cfg.data.min_crop_area, flip_prob=cfg.data.flip_prob,
      seed=cfg.data.seed + 1)
  iterator = iter(preview)
  state = {"calls": 0}

  def write(step: int) -> None:
    if state["calls"] % 20 == 0:
      batch = next(iterator)
      pairs = tf.concat([batch["view1"], batch["view2"]], axis=2)
      tf.summary.image("augmented_views", pairs, step=step, max_outputs=8)
    state["calls"] += 1

  return write


def run_experiment(cfg: configs.ExperimentConfig,
                   print_fn: Callable[[str], None] = print,
                   strategy: tf.distribute.Strategy | None = None) -> dict:
  """Trains and/or evaluates as `cfg.train.mode` says; returns the results.

  Args:
    cfg: the resolved experiment config.
    print_fn: receives progress and summary lines.
    strategy: overrides the strategy `cfg.train.distribution` would build.
  """
  t, d = cfg.train, cfg.data
  if t.mode == "export":
    return export_from_checkpoint(cfg, print_fn)
  keras.utils.set_random_seed(t.seed)
  strategy = strategy or strategy_lib.build_strategy(
      t.distribution, t.tpu_name, tpu_zone=t.tpu_zone,
      gcp_project=t.gcp_project, master=t.master)
  replicas = strategy.num_replicas_in_sync
  chief = strategy_lib.is_chief(strategy)
  strategy_lib.check_global_batch(t.eval_batch_size, strategy,
                                  "eval_batch_size")

  source = sources.get_source(d.dataset, d.data_dir,
                              skip_corrupt_images=d.skip_corrupt_images,
                              download=d.tfds_download)
  train_source = _training_source(cfg, source, print_fn)
  train_split = (t.unlabelled_split or d.train_split
                 if t.train_mode == "distill" else d.train_split)
  num_train = train_source.num_examples(train_split)
  num_eval = source.num_examples(d.eval_split)
  cfg = dataclasses.replace(
      cfg, head=dataclasses.replace(cfg.head, num_classes=source.num_classes))
  cfg = resolve_batch_size(cfg, num_train, replicas)
  t = cfg.train
  strategy_lib.check_global_batch(t.train_batch_size, strategy)
  schedule = compute_schedule(cfg, num_train, print_fn)
  _check_writable(t.model_dir)
  if chief:
    _write_json(os.path.join(t.model_dir, CONFIG_FILE), cfg.to_dict())
  print_fn(
      f"data: {source.name} train={num_train} ({train_split}) "
      f"eval={num_eval} ({d.eval_split}) classes={source.num_classes}; "
      f"{replicas} replica(s), global batch {t.train_batch_size}; "
      f"{schedule.total_steps} steps, warm-up {schedule.warmup_steps}, "
      f"checkpoint every {schedule.checkpoint_steps}")
  print_fn(precision.describe_precision(t.precision,
                                        use_tpu=t.distribution == "tpu"))

  with strategy.scope(), precision.policy_scope(t.precision):
    model = build_model(cfg, replicas)
    optimizer = precision.wrap_optimizer(build_optimizer(cfg, schedule),
                                         t.precision)
    global_step = optimizer.iterations
    memory = build_memory_bank(cfg, model, replicas)
  if t.mode != "eval":
    _check_free_space(t.model_dir, _checkpoint_bytes_estimate(model, memory))
  manager = checkpoints.make_checkpoint_manager(
      model, optimizer, t.model_dir, t.keep_checkpoint_max, extra=memory,
      worker_temp_directory=(None if chief
                             else _worker_temp_dir(t.model_dir, strategy)))

  if manager.latest_checkpoint:
    checkpoints.restore_for_resume(manager, manager.latest_checkpoint)
    print_fn(f"resumed from {manager.latest_checkpoint} at step "
             f"{int(global_step.numpy())}")
  elif t.checkpoint:
    loading.warm_start(
        model, t.checkpoint,
        zero_init_logits_layer=cfg.head.zero_init_logits_layer,
        print_fn=print_fn)
    if memory:
      memory[MOMENTUM_ENCODER].initialize_from(model)

  results: dict = {}
  if t.mode in ("train", "train_then_eval"):
    results.update(_train(cfg, strategy, model, optimizer, manager, source,
                          train_source, train_split, schedule, chief,
                          print_fn, memory))
  if t.mode in ("eval", "train_then_eval"):
    if t.mode == "eval" and not manager.latest_checkpoint and not t.checkpoint:
      raise ValueError(
          f"--mode=eval found no checkpoint in model_dir {t.model_dir!r} and "
          "no --checkpoint was given")
    results.update(_evaluate(cfg, strategy, model, source))
    results["global_step"] = int(global_step.numpy())
  # Training and evaluation are the only readers of the files.
  _count_skipped_files(source, results, print_fn)
  if t.mode in ("eval", "train_then_eval") and chief:
    _write_json(os.path.join(t.model_dir, RESULT_FILE), results)
    _write_json(os.path.join(
        t.model_dir, f"result_{results['global_step']}.json"), results)
  if t.mode in ("train", "train_then_eval") and cfg.export.export_at_end:
    # Every worker takes part in reading the weights; only the chief writes.
    export_model = _single_device_copy(cfg, model, strategy)
    if chief:
      results.update(_export(cfg, export_model, int(global_step.numpy()),
                             dict(results), print_fn))
  if results:
    shown = " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in sorted(results.items()))
    print_fn(f"final: {shown}")
    summary = probe_summary(results)
    if summary:
      print_fn(f"summary: {summary}")
  return results


SKIPPED_FILES = "skipped_corrupt_images"


def _count_skipped_files(source, results: dict, print_fn) -> None:
  """Reports the files `--skip_corrupt_images` dropped while decoding."""
  undecodable = source.undecodable_files()
  if undecodable:
    more = " ..." if len(undecodable) > 5 else ""
    print_fn(f"skipped {len(undecodable)} undecodable image file(s): "
             f"{', '.join(undecodable[:5])}{more}")
    results[SKIPPED_FILES] = len(undecodable)


def _export(cfg: configs.ExperimentConfig, model: keras.Model, step: int,
            metrics: dict, print_fn) -> dict:
  """Writes the TF Serving version (and the Hub module when asked)."""
  from tf_simclr.export import hub  # Export code is only loaded when used.
  from tf_simclr.export import serving
  e = cfg.export
  export_base = e.export_dir or os.path.join(cfg.train.model_dir, "export")
  metadata = {"global_step": step, "config": cfg.to_dict(),
              "dataset": cfg.data.dataset, "train_mode": cfg.train.train_mode,
              "metrics": {k: v for k, v in metrics.items()
                          if isinstance(v, (int, float))}}
  has_head = getattr(model, "supervised_head", None) is not None
  version_dir = serving.export_serving(
      model, export_base, image_size=cfg.data.image_size,
      num_classes=cfg.head.num_classes if has_head else None,
      keep_exports=e.keep_exports, metadata=metadata)
  print_fn(f"exported TF Serving model to {version_dir}")
  outputs = {"serving_export": version_dir}
  if e.hub_export_dir:
    outputs["hub_export"] = hub.export_hub(
        model, e.hub_export_dir, image_size=cfg.data.image_size,
        metadata=metadata)
    print_fn(f"exported TF Hub module to {outputs['hub_export']}")
  return outputs


def _single_device_copy(cfg: configs.ExperimentConfig, model: keras.Model,
                        strategy: tf.distribute.Strategy) -> keras.Model:
  """`model`, or a float32 copy outside the strategy when it has replicas.

  A SavedModel cannot hold functions over variables mirrored on several
  replicas. Reading synchronised-on-read variables (batch-norm moving
  statistics) is a collective under multi-worker strategies, so every worker
  must call this.
  """
  if strategy.num_replicas_in_sync == 1:
    return model
  copy = loading.model_from_config(cfg)
  copy.set_weights(model.get_weights())
  return copy


def export_from_checkpoint(cfg: configs.ExperimentConfig,
                           print_fn: Callable[[str], None] = print) -> dict:
  """`--mode=export`: a tf_simclr checkpoint or an original-code SavedModel.

  A tf_simclr checkpoint is rebuilt from the config.json of the run that wrote
  it (the architecture is never re-typed); an original-code SavedModel's
  architecture is inferred from its weights.
  """
  path = cfg.train.checkpoint
  if not path:
    raise ValueError("--mode=export needs --checkpoint=PATH")
  loaded = loading.model_from_checkpoint(cfg, path, print_fn)
  # The stored run's config, with this export's settings.
  cfg = dataclasses.replace(
      loaded.config, train=dataclasses.replace(
          loaded.config.train, mode="export", checkpoint=path,
          model_dir=cfg.train.model_dir), export=cfg.export)
  results = _export(cfg, loaded.model, loaded.step, {}, print_fn)
  print_fn(f"final: exported {results}")
  return results


def _training_source(cfg: configs.ExperimentConfig,
                     source: sources.DataSource, print_fn) -> sources.DataSource:
  """The labelled subset for supervised stages, else the whole source."""
  t = cfg.train
  if t.train_mode == "pretrain" or not (t.label_fraction or
                                        t.label_subset_file):
    return source
  return subsets.labelled_subset_source(
      source, cfg.data.train_split,
      label_fraction=t.label_fraction or None,
      label_subset_file=t.label_subset_file, seed=t.seed, print_fn=print_fn)


def _distributed_training_data(cfg, strategy, source, split, start_step,
                               builder_fn, image_size=None, **kwargs):
  """A distributed, endless training stream resumed at `start_step`."""
  d, t = cfg.data, cfg.train
  image_size = image_size or d.image_size

  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    return builder_fn(
        source, split,
        per_replica_batch_size=context.get_per_replica_batch_size(
            t.train_batch_size),
        image_size=image_size, input_context=context, seed=d.seed,
        cache=d.cache_dataset,
        # Each input pipeline feeds num_replicas / num_pipelines replicas.
        start_batch=start_step * context.num_replicas_in_sync //
        context.num_input_pipelines, **kwargs)

  return strategy.distribute_datasets_from_function(dataset_fn)


def _finetune_augment(d: configs.DataConfig) -> dict:
  return {"min_crop_area": d.finetune_min_crop_area, "flip_prob": d.flip_prob}


def _make_trainer(cfg, strategy, model, optimizer, source, train_source,
                  train_split, memory, print_fn):
  d, t, o = cfg.data, cfg.train, cfg.optimizer
  start_step = int(optimizer.iterations.numpy())
  # The nested XLA function cannot hold a cross-replica op (NT-Xent's
  # gather, synchronised BN) under MirroredStrategy on CPUs: TF keeps its
  # merge_call there, which a nested tf.function may not contain. TPUStrategy
  # compiles the whole replica step with XLA whatever this says.
  jit = t.jit_compile and strategy.num_replicas_in_sync == 1
  if t.jit_compile and not jit and t.distribution != "tpu":
    print_fn(f"--jit_compile: training steps stay uncompiled on "
             f"{strategy.num_replicas_in_sync} replicas (eval is compiled)")
  if t.train_mode == "pretrain":
    dataset = _distributed_training_data(
        cfg, strategy, source, d.train_split, start_step,
        pipelines.build_pretrain_dataset,
        image_size=d.pretrain_view_size,
        color_jitter_strength=d.color_jitter_strength,
        min_crop_area=d.min_crop_area, flip_prob=d.flip_prob)
    return pretrain.PretrainTrainer(
        strategy, model, optimizer, dataset,
        optimizer_name=o.optimizer, weight_decay=o.weight_decay,
        temperature=cfg.loss.temperature, hidden_norm=cfg.loss.hidden_norm,
        blur_image_size=d.pretrain_view_size if d.use_blur else None,
        seed=d.seed, jit_compile=jit,
        momentum_encoder=memory.get(MOMENTUM_ENCODER),
        negative_queue=memory.get(NEGATIVE_QUEUE),
        memory_momentum=cfg.loss.memory_momentum)
  if t.train_mode in ("finetune", "supervised"):
    dataset = _distributed_training_data(
        cfg, strategy, train_source, d.train_split, start_step,
        pipelines.build_finetune_dataset, **_finetune_augment(d))
    return finetune.FinetuneTrainer(
        strategy, model, optimizer, dataset, optimizer_name=o.optimizer,
        weight_decay=o.weight_decay, jit_compile=jit)
  # Distillation: the teacher labels the unlabelled split; the optional
  # labelled term uses the labelled subset.
  teacher = loading.load_teacher(t.teacher_checkpoint, strategy, print_fn)
  unlabelled = _distributed_training_data(
      cfg, strategy, source, train_split, start_step,
      pipelines.build_finetune_dataset, **_finetune_augment(d))
  if t.distill_label_weight > 0:
    labelled_source = _training_source(
        dataclasses.replace(cfg, train=dataclasses.replace(
            t, train_mode="finetune")), source, print_fn)
    dataset = {"unlabelled": unlabelled,
               "labelled": _distributed_training_data(
                   cfg, strategy, labelled_source, d.train_split, start_step,
                   pipelines.build_finetune_dataset, **_finetune_augment(d))}
  else:
    dataset = unlabelled
  trainer = distill.DistillTrainer(
      strategy, teacher, model, optimizer, dataset,
      num_classes=cfg.head.num_classes, optimizer_name=o.optimizer,
      weight_decay=o.weight_decay, temperature=t.distill_temperature,
      scale_by_temperature_squared=t.distill_temperature_squared,
      distill_label_weight=t.distill_label_weight, jit_compile=jit)
  return trainer


def _train(cfg, strategy, model, optimizer, manager, source, train_source,
           train_split, schedule, chief, print_fn, memory) -> dict:
  d, t = cfg.data, cfg.train
  if int(optimizer.iterations.numpy()) >= schedule.total_steps:
    print_fn(f"training already at step {schedule.total_steps}; nothing to do")
    return {}
  trainer = _make_trainer(cfg, strategy, model, optimizer, source,
                          train_source, train_split, memory, print_fn)
  writer = (tf.summary.create_file_writer(os.path.join(t.model_dir, "train"))
            if chief else tf.summary.create_noop_writer())
  settings = loop_lib.LoopSettings(
      total_steps=schedule.total_steps,
      steps_per_loop=schedule.steps_per_loop,
      checkpoint_steps=schedule.checkpoint_steps,
      images_per_step=t.train_batch_size,
      # Loss scaling skips steps with overflowing float16 gradients itself.
      finite_keys=((pretrain.TOTAL_LOSS,) if t.precision == "mixed_float16"
                   else (pretrain.TOTAL_LOSS, common.GRADIENT_NORM)),
      log_every_steps=t.log_every_steps,
      is_chief=chief,
      save_on_sigterm=strategy_lib.is_single_worker(strategy))
  train_loop = loop_lib.TrainLoop(
      trainer, optimizer.iterations, manager, writer, settings,
      extra_summaries=(_view_grid_summary(source, cfg)
                       if chief and t.train_mode == "pretrain" else None),
      print_fn=print_fn,
      cluster_resolver=strategy_lib.preemption_cluster_resolver(strategy))
  start = time.time()
  metrics = train_loop.run()
  print_fn(f"training finished at step {int(optimizer.iterations.numpy())} "
           f"in {time.time() - start:.0f}s")
  return {f"train_{k}": v for k, v in metrics.items()}


def _evaluate(cfg, strategy, model, source) -> dict:
  d, t = cfg.data, cfg.train
  results: dict = {}
  eval_batches = t.eval_steps or -1

  def eval_data(split):
    # Padded, masked full batches: static shapes on every replica.
    return strategy.distribute_datasets_from_function(
        lambda ctx: pipelines.build_eval_dataset(
            source, split,
            per_replica_batch_size=ctx.get_per_replica_batch_size(
                t.eval_batch_size),
            image_size=d.image_size, input_context=ctx))

  if model.supervised_head is not None:
    dataset = eval_data(d.eval_split)
    results.update(evaluation.evaluate_classifier(
        strategy, model, dataset, simclr_model.LOGITS_SUP, eval_batches,
        jit_compile=t.jit_compile))
    if t.train_mode == "distill" and t.teacher_checkpoint:
      teacher = loading.load_teacher(t.teacher_checkpoint, strategy,
                                     print_fn=lambda _: None)
      teacher_results = evaluation.evaluate_classifier(
          strategy, teacher, dataset, simclr_model.LOGITS_SUP, eval_batches,
          jit_compile=t.jit_compile)
      results.update({f"teacher_{k}": v for k, v in teacher_results.items()})

  if t.knn_eval or t.probe_label_fractions:
    def features(split, encoder):
      return evaluation.extract_features(
          strategy, encoder, eval_data(split), resnet.FINAL_AVG_POOL,
          jit_compile=t.jit_compile)

    train_x, train_y = features(d.train_split, model)
    test_x, test_y = features(d.eval_split, model)
    if t.knn_eval:
      results["knn_top_1_accuracy"] = evaluation.knn_top1(
          train_x, train_y, test_x, test_y, source.num_classes, k=t.knn_k,
          temperature=t.knn_temperature)
    if t.probe_label_fractions:
      with strategy.scope():
        random_model = build_model(cfg, strategy.num_replicas_in_sync)
      random_train_x, _ = features(d.train_split, random_model)
      random_test_x, _ = features(d.eval_split, random_model)
      pixels_train_x, pixels_train_y = evaluation.raw_pixel_features(
          source.make_dataset(d.train_split))
      pixels_test_x, pixels_test_y = evaluation.raw_pixel_features(
          source.make_dataset(d.eval_split))
      # Features gathered from several input pipelines (multi-worker) come
      # in another order than one pass over the source; the raw-pixel
      # baseline is then left out rather than matched to the wrong labels.
      pixels_align = (np.array_equal(pixels_train_y, train_y) and
                      np.array_equal(pixels_test_y, test_y))
      # The subsets fine-tuning picks with the same --label_fraction and
      # --seed (chosen by example id), when the index lists the examples in
      # the order read here.
      train_ids, id_labels = source.example_index(d.train_split)
      if not np.array_equal(id_labels, train_y):
        train_ids = None
      probed = {PRETRAINED: (train_x, test_x),
                RANDOM_INIT: (random_train_x, random_test_x)}
      if pixels_align:
        probed[RAW_PIXELS] = (pixels_train_x, pixels_test_x)
      for fraction in t.probe_label_fractions:
        indices = subsets.class_balanced_subset(train_y, fraction, seed=t.seed,
                                                example_ids=train_ids)
        tag = f"{fraction:g}"
        for name, (x_train, x_test) in probed.items():
          results[f"probe_{tag}_{name}_top_1"] = evaluation.linear_probe_top1(
              x_train, train_y, x_test, test_y, indices)
        results[f"probe_{tag}_num_labels"] = int(len(indices))
  return results


PRETRAINED = "pretrained"
RANDOM_INIT = "random_init"
RAW_PIXELS = "raw_pixels"


def probe_summary(results: dict) -> str | None:
  """One line putting each probe next to its baselines, and k-NN; or None."""
  parts = []
  fractions = sorted({float(k.split("_")[1]) for k in results
                      if k.startswith("probe_") and k.endswith("_num_labels")})
  for fraction in fractions:
    tag = f"{fraction:g}"
    scores = " / ".join(
        f"{results[f'probe_{tag}_{name}_top_1']:.3f}"
        if f"probe_{tag}_{name}_top_1" in results else "n/a"
        for name in (PRETRAINED, RANDOM_INIT, RAW_PIXELS))
    parts.append(f"{fraction:.0%} labels "
                 f"({results[f'probe_{tag}_num_labels']}) {scores}")
  if parts:
    parts[0] = ("linear probe top-1, pretrained / random init / raw pixels: "
                + parts[0])
  if "knn_top_1_accuracy" in results:
    parts.append(f"k-NN top-1 {results['knn_top_1_accuracy']:.3f}")
  return " | ".join(parts) or None
