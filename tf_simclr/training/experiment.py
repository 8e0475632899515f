"""One experiment from a resolved config: train, evaluate, report.

`run.py` turns flags into an `ExperimentConfig` and calls `run_experiment`;
everything here takes that config explicitly. `run_experiment` is the generic
driver: what a train mode builds, trains on and evaluates comes from its
`stages.Stage`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from typing import Callable

import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr import paths
from tf_simclr.data import sources
from tf_simclr.models import loading
from tf_simclr.training import checkpoints
from tf_simclr.training import common
from tf_simclr.training import evaluation
from tf_simclr.training import loop as loop_lib
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision
from tf_simclr.training import pretrain
from tf_simclr.training import stages
from tf_simclr.training import strategy as strategy_lib

RESULT_FILE = "result.json"
CONFIG_FILE = loading.CONFIG_FILE  # Written here, read by the loader.
# TensorBoard event files of the evaluation results, beside train/.
EVAL_SUMMARY_DIR = "eval"
TRAINING_MODES = ("train", "train_then_eval")
EVALUATING_MODES = ("eval", "train_then_eval")


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


def run_experiment(cfg: configs.ExperimentConfig,
                   print_fn: Callable[[str], None] = print,
                   strategy: tf.distribute.Strategy | None = None) -> dict:
  """Trains and/or evaluates as `cfg.train.mode` says; returns the results.

  Args:
    cfg: the resolved experiment config.
    print_fn: receives progress and summary lines.
    strategy: overrides the strategy `cfg.train.distribution` would build.
  """
  t = cfg.train
  if t.mode == "export":
    return export_from_checkpoint(cfg, print_fn)
  stage = stages.get(t.train_mode)
  keras.utils.set_random_seed(t.seed)
  strategy = strategy or _build_strategy(t)
  chief = strategy_lib.is_chief(strategy)
  source = sources.get_source(cfg.data.dataset, cfg.data.data_dir,
                              skip_corrupt_images=cfg.data.skip_corrupt_images,
                              download=cfg.data.tfds_download)
  train_source = stage.training_source(cfg, source, print_fn)
  cfg, schedule = _resolve(cfg, stage, strategy, source, train_source,
                           print_fn)
  if chief:
    _write_json(os.path.join(cfg.train.model_dir, CONFIG_FILE), cfg.to_dict())
  state = stage.build(cfg, strategy, schedule)
  manager = _restore_or_warm_start(cfg, stage, strategy, state, print_fn)

  results: dict = {}
  if cfg.train.mode in TRAINING_MODES:
    results.update(_train(cfg, stage, strategy, state, manager, train_source,
                          schedule, print_fn))
  if cfg.train.mode in EVALUATING_MODES:
    results.update(_evaluate(cfg, stage, strategy, state, manager, source,
                             print_fn))
  # Training and evaluation are the only readers of the files.
  _count_skipped_files(source, results, print_fn)
  if cfg.train.mode in EVALUATING_MODES and chief:
    _write_results(cfg.train.model_dir, results)
  if cfg.train.mode in TRAINING_MODES and cfg.export.export_at_end:
    # Every worker takes part in reading the weights; only the chief writes.
    export_model = _single_device_copy(cfg, stage, state.model, strategy)
    if chief:
      results.update(_export(cfg, export_model,
                             int(state.optimizer.iterations.numpy()),
                             dict(results), print_fn))
  _print_final(results, print_fn)
  return results


def _build_strategy(t: configs.TrainConfig) -> tf.distribute.Strategy:
  return strategy_lib.build_strategy(
      t.distribution, t.tpu_name, tpu_zone=t.tpu_zone,
      gcp_project=t.gcp_project, master=t.master)


def _resolve(cfg: configs.ExperimentConfig, stage: stages.Stage,
             strategy: tf.distribute.Strategy, source: sources.DataSource,
             train_source: sources.DataSource, print_fn
             ) -> tuple[configs.ExperimentConfig, Schedule]:
  """The config with classes and batch filled in from the data, its schedule.

  Also checks the batches against the replicas and model_dir for writing,
  and prints what the run will do.
  """
  d = cfg.data
  replicas = strategy.num_replicas_in_sync
  strategy_lib.check_global_batch(cfg.train.eval_batch_size, strategy,
                                  "eval_batch_size")
  train_split = stage.training_split(cfg)
  num_train = train_source.num_examples(train_split)
  cfg = dataclasses.replace(
      cfg, head=dataclasses.replace(cfg.head, num_classes=source.num_classes))
  cfg = stage.fit_to_data(resolve_batch_size(cfg, num_train, replicas),
                          num_train)
  t = cfg.train
  strategy_lib.check_global_batch(t.train_batch_size, strategy)
  schedule = compute_schedule(cfg, num_train, print_fn)
  _check_writable(t.model_dir)
  print_fn(
      f"data: {source.name} train={num_train} ({train_split}) "
      f"eval={source.num_examples(d.eval_split)} ({d.eval_split}) "
      f"classes={source.num_classes}; "
      f"{replicas} replica(s), global batch {t.train_batch_size}; "
      f"{schedule.total_steps} steps, warm-up {schedule.warmup_steps}, "
      f"checkpoint every {schedule.checkpoint_steps}")
  print_fn(precision.describe_precision(t.precision,
                                        use_tpu=t.distribution == "tpu"))
  return cfg, schedule


def _restore_or_warm_start(cfg: configs.ExperimentConfig, stage: stages.Stage,
                           strategy: tf.distribute.Strategy,
                           state: stages.TrainingState, print_fn):
  """The checkpoint manager, after resuming from model_dir's latest
  checkpoint or else warm-starting from `train.checkpoint` (if given)."""
  t = cfg.train
  chief = strategy_lib.is_chief(strategy)
  if t.mode != "eval":
    _check_free_space(t.model_dir,
                      _checkpoint_bytes_estimate(state.model, state.extras))
  manager = checkpoints.make_checkpoint_manager(
      state.model, state.optimizer, t.model_dir, t.keep_checkpoint_max,
      extra=state.extras,
      worker_temp_directory=(None if chief
                             else _worker_temp_dir(t.model_dir, strategy)))
  if manager.latest_checkpoint:
    checkpoints.restore_for_resume(manager, manager.latest_checkpoint)
    print_fn(f"resumed from {manager.latest_checkpoint} at step "
             f"{int(state.optimizer.iterations.numpy())}")
  elif t.checkpoint:
    stage.warm_start(cfg, state, print_fn)
  return manager


def _train(cfg: configs.ExperimentConfig, stage: stages.Stage,
           strategy: tf.distribute.Strategy, state: stages.TrainingState,
           manager, train_source: sources.DataSource, schedule: Schedule,
           print_fn) -> dict:
  t = cfg.train
  step = state.optimizer.iterations
  if int(step.numpy()) >= schedule.total_steps:
    print_fn(f"training already at step {schedule.total_steps}; nothing to do")
    return {}
  trainer = stage.make_trainer(cfg, strategy, state, train_source, print_fn)
  chief = strategy_lib.is_chief(strategy)
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
      trainer, step, manager, writer, settings,
      extra_summaries=(stage.train_summaries(cfg, train_source) if chief
                       else None),
      print_fn=print_fn,
      cluster_resolver=strategy_lib.preemption_cluster_resolver(strategy))
  start = time.time()
  metrics = train_loop.run()
  print_fn(f"training finished at step {int(step.numpy())} "
           f"in {time.time() - start:.0f}s")
  return {f"train_{k}": v for k, v in metrics.items()}


def _evaluate(cfg: configs.ExperimentConfig, stage: stages.Stage,
              strategy: tf.distribute.Strategy, state: stages.TrainingState,
              manager, source: sources.DataSource, print_fn) -> dict:
  """The stage's evaluation at the current step; the chief also writes it
  to TensorBoard."""
  t = cfg.train
  if t.mode == "eval" and not manager.latest_checkpoint and not t.checkpoint:
    raise ValueError(
        f"--mode=eval found no checkpoint in model_dir {t.model_dir!r} and "
        "no --checkpoint was given")
  results = stage.evaluate(cfg, strategy, state.model, source, print_fn)
  step = int(state.optimizer.iterations.numpy())
  if strategy_lib.is_chief(strategy):
    write_eval_summaries(os.path.join(t.model_dir, EVAL_SUMMARY_DIR),
                         results, step)
  results["global_step"] = step
  return results


def write_eval_summaries(directory: str, results: dict, step: int) -> None:
  """Every numeric result as a scalar `eval/<key>` at `step` (TensorBoard)."""
  writer = tf.summary.create_file_writer(directory)
  with writer.as_default(step=step):
    for key, value in sorted(results.items()):
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        tf.summary.scalar(f"eval/{key}", value)
  writer.close()


def _write_results(model_dir: str, results: dict) -> None:
  _write_json(os.path.join(model_dir, RESULT_FILE), results)
  _write_json(os.path.join(model_dir, f"result_{results['global_step']}.json"),
              results)


def _print_final(results: dict, print_fn) -> None:
  if not results:
    return
  shown = " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in sorted(results.items()))
  print_fn(f"final: {shown}")
  summary = evaluation.probe_summary(results)
  if summary:
    print_fn(f"summary: {summary}")


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


def _single_device_copy(cfg: configs.ExperimentConfig, stage: stages.Stage,
                        model: keras.Model,
                        strategy: tf.distribute.Strategy) -> keras.Model:
  """`model`, or a float32 copy outside the strategy when it has replicas.

  A SavedModel cannot hold functions over variables mirrored on several
  replicas. Reading synchronised-on-read variables (batch-norm moving
  statistics) is a collective under multi-worker strategies, so every worker
  must call this.
  """
  if strategy.num_replicas_in_sync == 1:
    return model
  copy = stage.build_model(cfg, replicas=1)
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
