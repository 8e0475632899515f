"""One `Stage` per train mode: what pretraining, fine-tuning, supervised
training and distillation do differently.

In the spirit of Model Garden's `Task`, a stage builds its model (and any
other object it checkpoints), warm-starts it from `train.checkpoint`, says
which examples it trains on, builds its training datasets and its trainer,
and evaluates. `experiment.run_experiment` is the generic driver around it
(strategy, schedule, resuming from model_dir, result files, export), and
`bench/bench_train.py` builds its trainers the same way::

  stage = stages.get(cfg.train.train_mode)
  state = stage.build(cfg, strategy, schedule)
  trainer = stage.make_trainer(cfg, strategy, state, train_source)

The trainers themselves (the per-replica step and its loss) stay in
pretrain.py, finetune.py and distill.py. Another train mode is a `Stage`
subclass registered under its name with `@stages.register("name")`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import orbit
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.data import pipelines
from tf_simclr.data import sources
from tf_simclr.data import subsets
from tf_simclr.models import builder
from tf_simclr.models import loading
from tf_simclr.models import memory_bank
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model
from tf_simclr.training import distill
from tf_simclr.training import evaluation
from tf_simclr.training import finetune
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision
from tf_simclr.training import pretrain
from tf_simclr.training import small_set

if TYPE_CHECKING:
  from tf_simclr.training import experiment

# Checkpoint keys of the memory bank's objects.
MOMENTUM_ENCODER = "momentum_encoder"
NEGATIVE_QUEUE = "negative_queue"

PrintFn = Callable[[str], None]
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


@dataclasses.dataclass
class TrainingState:
  """What a run trains and checkpoints.

  Attributes:
    model: the trained `SimCLRModel`.
    optimizer: its optimizer; `optimizer.iterations` is the global step.
    extras: further checkpointed objects by checkpoint key (the memory bank).
  """
  model: keras.Model
  optimizer: keras.optimizers.legacy.Optimizer
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Stage:
  """A train mode's model, data, trainer and evaluation.

  Every method takes the experiment config explicitly; a stage instance
  (`get(name)` makes a new one) only caches what it loads once per run, such
  as the distillation teacher.
  """

  name: str = ""  # Set by `register`.

  # --------------------------------------------------------------------------
  # Training examples

  def training_split(self, cfg: configs.ExperimentConfig) -> str:
    """The split the stage trains on (and the schedule counts)."""
    return cfg.data.train_split

  def training_source(self, cfg: configs.ExperimentConfig,
                      source: sources.DataSource,
                      print_fn: PrintFn = print) -> sources.DataSource:
    """The source whose `training_split` the stage trains on."""
    del cfg, print_fn
    return source

  def fit_to_data(self, cfg: configs.ExperimentConfig,
                  num_train: int) -> configs.ExperimentConfig:
    """`cfg` with what the training set's size decides filled in.

    Called once `head.num_classes` and the batch are known, before the model
    is built; a value the user gave explicitly (`cfg.overrides`) stays.
    """
    del num_train
    return cfg

  # --------------------------------------------------------------------------
  # Model, optimizer and other checkpointed objects

  def build_model(self, cfg: configs.ExperimentConfig,
                  replicas: int) -> keras.Model:
    """The stage's SimCLRModel, built (variables created) at image_size."""
    return loading.model_from_config(cfg, replicas=replicas,
                                     train_mode=self.name)

  def build_optimizer(self, cfg: configs.ExperimentConfig,
                      schedule: "experiment.Schedule"
                      ) -> keras.optimizers.legacy.Optimizer:
    """The configured optimizer on the warm-up + cosine schedule."""
    o = cfg.optimizer
    learning_rate = optimizer_lib.build_learning_rate_schedule(
        o.learning_rate, o.learning_rate_scaling, cfg.train.train_batch_size,
        schedule.warmup_steps, schedule.total_steps)
    return optimizer_lib.build_optimizer(
        o.optimizer, learning_rate, momentum=o.momentum,
        weight_decay=o.weight_decay, eeta=o.lars_eeta)

  def build_extras(self, cfg: configs.ExperimentConfig, model: keras.Model,
                   replicas: int) -> dict[str, Any]:
    """Objects checkpointed beside model and optimizer, by checkpoint key."""
    del cfg, model, replicas
    return {}

  def build(self, cfg: configs.ExperimentConfig,
            strategy: tf.distribute.Strategy,
            schedule: "experiment.Schedule") -> TrainingState:
    """Model, optimizer and extras in the strategy's and precision's scope."""
    t = cfg.train
    replicas = strategy.num_replicas_in_sync
    with strategy.scope(), precision.policy_scope(t.precision):
      model = self.build_model(cfg, replicas)
      optimizer = precision.wrap_optimizer(
          self.build_optimizer(cfg, schedule), t.precision)
      extras = self.build_extras(cfg, model, replicas)
    return TrainingState(model, optimizer, extras)

  def warm_start(self, cfg: configs.ExperimentConfig, state: TrainingState,
                 print_fn: PrintFn = print) -> None:
    """Loads `train.checkpoint`'s weights (no optimizer state, no step)."""
    loading.warm_start(
        state.model, cfg.train.checkpoint,
        zero_init_logits_layer=cfg.head.zero_init_logits_layer,
        print_fn=print_fn)

  # --------------------------------------------------------------------------
  # Training

  def dataset_fns(self, cfg: configs.ExperimentConfig,
                  source: sources.DataSource, start_step: int,
                  print_fn: PrintFn = print):
    """The trainer's input: a `DatasetFn`, or a dict of them by batch key.

    Args:
      cfg: the resolved config.
      source: what `training_source` returned.
      start_step: steps already taken (resume); the streams continue there.
      print_fn: receives progress lines.
    """
    raise NotImplementedError

  def build_trainer(self, cfg: configs.ExperimentConfig,
                    strategy: tf.distribute.Strategy, state: TrainingState,
                    dataset, jit_compile: bool,
                    print_fn: PrintFn = print) -> orbit.AbstractTrainer:
    """The stage's orbit trainer over the distributed `dataset`."""
    raise NotImplementedError

  def make_trainer(self, cfg: configs.ExperimentConfig,
                   strategy: tf.distribute.Strategy, state: TrainingState,
                   source: sources.DataSource, print_fn: PrintFn = print,
                   input_transform: Optional[
                       Callable[[tf.data.Dataset], tf.data.Dataset]] = None
                   ) -> orbit.AbstractTrainer:
    """The trainer, reading its data from the current global step on.

    Args:
      cfg: the resolved config.
      strategy: the strategy `state` was built in.
      state: what `build` returned (restored or warm-started).
      source: what `training_source` returned.
      print_fn: receives progress lines.
      input_transform: applied to each input pipeline's dataset (benchmarks
        use it to repeat one batch).
    """
    t = cfg.train
    start_step = int(state.optimizer.iterations.numpy())
    fns = self.dataset_fns(cfg, source, start_step, print_fn)
    if input_transform is not None:
      fns = tf.nest.map_structure(
          lambda fn: lambda context: input_transform(fn(context)), fns)
    dataset = tf.nest.map_structure(strategy.distribute_datasets_from_function,
                                    fns)
    # The nested XLA function cannot hold a cross-replica op (NT-Xent's
    # gather, synchronised BN) under MirroredStrategy on CPUs: TF keeps its
    # merge_call there, which a nested tf.function may not contain.
    # TPUStrategy compiles the whole replica step with XLA whatever this says.
    jit = t.jit_compile and strategy.num_replicas_in_sync == 1
    if t.jit_compile and not jit and t.distribution != "tpu":
      print_fn(f"--jit_compile: training steps stay uncompiled on "
               f"{strategy.num_replicas_in_sync} replicas (eval is compiled)")
    return self.build_trainer(cfg, strategy, state, dataset, jit, print_fn)

  def train_summaries(self, cfg: configs.ExperimentConfig,
                      source: sources.DataSource
                      ) -> Optional[Callable[[int], None]]:
    """Extra summaries the chief writes at each loop's step, or None."""
    del cfg, source
    return None

  # --------------------------------------------------------------------------
  # Evaluation

  def evaluate(self, cfg: configs.ExperimentConfig,
               strategy: tf.distribute.Strategy, model: keras.Model,
               source: sources.DataSource,
               print_fn: PrintFn = print) -> dict:
    """Classifier top-1/top-5 (with a supervised head), then the k-NN and
    linear-probe monitors on frozen features when the config asks for them.
    """
    results: dict = {}
    if model.supervised_head is not None:
      results.update(self.evaluate_classifiers(
          cfg, strategy, model,
          _eval_dataset(cfg, strategy, source, cfg.data.eval_split),
          print_fn))
    t = cfg.train
    if t.knn_eval or t.probe_label_fractions:
      results.update(self._frozen_feature_results(cfg, strategy, model,
                                                  source))
    return results

  def evaluate_classifiers(self, cfg: configs.ExperimentConfig,
                           strategy: tf.distribute.Strategy,
                           model: keras.Model, dataset,
                           print_fn: PrintFn = print) -> dict:
    """Top-1/top-5 of the model's supervised head on the eval `dataset`."""
    del print_fn
    return _classifier_results(cfg, strategy, model, dataset)

  def _frozen_feature_results(self, cfg, strategy, model, source) -> dict:
    """k-NN and linear probes on final_avg_pool, beside their baselines."""
    d, t = cfg.data, cfg.train
    results: dict = {}

    def features(split, encoder):
      return evaluation.extract_features(
          strategy, encoder, _eval_dataset(cfg, strategy, source, split),
          resnet.FINAL_AVG_POOL, jit_compile=t.jit_compile)

    train_x, train_y = features(d.train_split, model)
    test_x, test_y = features(d.eval_split, model)
    if t.knn_eval:
      results[evaluation.KNN_TOP_1] = evaluation.knn_top1(
          train_x, train_y, test_x, test_y, source.num_classes, k=t.knn_k,
          temperature=t.knn_temperature)
    if not t.probe_label_fractions:
      return results
    with strategy.scope():
      random_model = self.build_model(cfg, strategy.num_replicas_in_sync)
    random_train_x, _ = features(d.train_split, random_model)
    random_test_x, _ = features(d.eval_split, random_model)
    pixels_train_x, pixels_train_y = evaluation.raw_pixel_features(
        source.make_dataset(d.train_split))
    pixels_test_x, pixels_test_y = evaluation.raw_pixel_features(
        source.make_dataset(d.eval_split))
    # Features gathered from several input pipelines (multi-worker) come in
    # another order than one pass over the source; the raw-pixel baseline is
    # then left out rather than matched to the wrong labels.
    pixels_align = (np.array_equal(pixels_train_y, train_y) and
                    np.array_equal(pixels_test_y, test_y))
    # The subsets fine-tuning picks with the same --label_fraction and --seed
    # (chosen by example id), when the index lists the examples in the order
    # read here.
    train_ids, id_labels = source.example_index(d.train_split)
    if not np.array_equal(id_labels, train_y):
      train_ids = None
    probed = {evaluation.PRETRAINED: (train_x, test_x),
              evaluation.RANDOM_INIT: (random_train_x, random_test_x)}
    if pixels_align:
      probed[evaluation.RAW_PIXELS] = (pixels_train_x, pixels_test_x)
    for fraction in t.probe_label_fractions:
      indices = subsets.class_balanced_subset(train_y, fraction, seed=t.seed,
                                              example_ids=train_ids)
      for name, (x_train, x_test) in probed.items():
        results[evaluation.probe_key(fraction, name)] = (
            evaluation.linear_probe_top1(x_train, train_y, x_test, test_y,
                                         indices))
      results[evaluation.probe_count_key(fraction)] = int(len(indices))
    return results


# ----------------------------------------------------------------------------
# Registry

_STAGES: dict[str, type[Stage]] = {}


def register(name: str) -> Callable[[type[Stage]], type[Stage]]:
  """Class decorator registering a `Stage` subclass as train mode `name`."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a non-empty string, got {name!r}")

  def decorate(cls: type[Stage]) -> type[Stage]:
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
      raise ValueError(f"register({name!r}) needs a Stage subclass, got "
                       f"{cls!r}")
    if name in _STAGES:
      raise ValueError(f"stage {name!r} is already registered "
                       f"({_STAGES[name].__name__})")
    cls.name = name
    _STAGES[name] = cls
    return cls

  return decorate


def names() -> tuple[str, ...]:
  """Registered stage names, in registration order."""
  return tuple(_STAGES)


def get(name: str) -> Stage:
  """A new instance of the stage registered as `name`."""
  if name not in _STAGES:
    raise ValueError(f"train_mode must be one of {list(names())}, got "
                     f"{name!r}")
  return _STAGES[name]()


# ----------------------------------------------------------------------------
# Shared pieces


def _pipeline_options(d: configs.DataConfig) -> dict[str, Any]:
  return {"seed": d.seed, "cache": d.cache_dataset,
          "shuffle_buffer_multiplier": d.shuffle_buffer_multiplier}


def _finetune_dataset_fn(cfg: configs.ExperimentConfig,
                         source: sources.DataSource, split: str,
                         start_step: int) -> DatasetFn:
  """Crop-and-flip batches of `split`: fine-tuning, supervised, distillation."""
  d = cfg.data
  return pipelines.make_dataset_fn(
      pipelines.build_finetune_dataset, source, split,
      global_batch_size=cfg.train.train_batch_size, start_step=start_step,
      image_size=d.image_size, min_crop_area=d.finetune_min_crop_area,
      flip_prob=d.flip_prob, **_pipeline_options(d))


def _eval_dataset(cfg: configs.ExperimentConfig,
                  strategy: tf.distribute.Strategy,
                  source: sources.DataSource, split: str):
  """One padded, masked pass over `split`: static shapes on every replica."""
  return strategy.distribute_datasets_from_function(pipelines.make_dataset_fn(
      pipelines.build_eval_dataset, source, split,
      global_batch_size=cfg.train.eval_batch_size,
      image_size=cfg.data.image_size))


def _classifier_results(cfg: configs.ExperimentConfig,
                        strategy: tf.distribute.Strategy, model, dataset
                        ) -> dict:
  t = cfg.train
  return evaluation.evaluate_classifier(
      strategy, model, dataset, simclr_model.LOGITS_SUP, t.eval_steps or -1,
      jit_compile=t.jit_compile)


def labelled_source(cfg: configs.ExperimentConfig,
                    source: sources.DataSource,
                    print_fn: PrintFn = print) -> sources.DataSource:
  """`source` restricted to the labelled subset of train_split, if any.

  Without `label_fraction` or `label_subset_file` every example counts as
  labelled and `source` itself is returned.
  """
  t = cfg.train
  if not (t.label_fraction or t.label_subset_file):
    return source
  return subsets.labelled_subset_source(
      source, cfg.data.train_split,
      label_fraction=t.label_fraction or None,
      label_subset_file=t.label_subset_file, seed=t.seed, print_fn=print_fn)


# ----------------------------------------------------------------------------
# The four stages


@register(builder.TRAIN_MODE_PRETRAIN)
class PretrainStage(Stage):
  """Contrastive pretraining on every example, with the optional memory bank
  of negatives; its eval adds the linear-eval head's accuracy when there is
  one."""

  def build_extras(self, cfg, model, replicas):
    """Momentum encoder + queue when memory_size > 0."""
    if not cfg.loss.memory_size:
      return {}
    twin_cfg = dataclasses.replace(
        cfg, head=dataclasses.replace(cfg.head,
                                      lineareval_while_pretraining=False))
    encoder = memory_bank.MomentumEncoder(self.build_model(twin_cfg,
                                                           replicas))
    encoder.initialize_from(model)
    queue = memory_bank.NegativeQueue(cfg.loss.memory_size,
                                      cfg.head.proj_out_dim)
    return {MOMENTUM_ENCODER: encoder, NEGATIVE_QUEUE: queue}

  def warm_start(self, cfg, state, print_fn=print):
    super().warm_start(cfg, state, print_fn)
    if MOMENTUM_ENCODER in state.extras:
      state.extras[MOMENTUM_ENCODER].initialize_from(state.model)

  def _view_options(self, cfg) -> dict[str, Any]:
    d = cfg.data
    return {"image_size": d.pretrain_view_size,
            "color_jitter_strength": d.color_jitter_strength,
            "min_crop_area": d.min_crop_area, "flip_prob": d.flip_prob}

  def dataset_fns(self, cfg, source, start_step, print_fn=print):
    return pipelines.make_dataset_fn(
        pipelines.build_pretrain_dataset, source, self.training_split(cfg),
        global_batch_size=cfg.train.train_batch_size, start_step=start_step,
        **self._view_options(cfg), **_pipeline_options(cfg.data))

  def build_trainer(self, cfg, strategy, state, dataset, jit_compile,
                    print_fn=print):
    d, o, loss = cfg.data, cfg.optimizer, cfg.loss
    return pretrain.PretrainTrainer(
        strategy, state.model, state.optimizer, dataset,
        optimizer_name=o.optimizer, weight_decay=o.weight_decay,
        temperature=loss.temperature, hidden_norm=loss.hidden_norm,
        blur_image_size=d.pretrain_view_size if d.use_blur else None,
        seed=d.seed, jit_compile=jit_compile,
        momentum_encoder=state.extras.get(MOMENTUM_ENCODER),
        negative_queue=state.extras.get(NEGATIVE_QUEUE),
        memory_momentum=loss.memory_momentum)

  def train_summaries(self, cfg, source):
    """A grid of augmented view pairs now and then."""
    preview = pipelines.build_pretrain_dataset(
        source, self.training_split(cfg), per_replica_batch_size=8,
        seed=cfg.data.seed + 1, **self._view_options(cfg))
    iterator = iter(preview)
    state = {"calls": 0}

    def write(step: int) -> None:
      if state["calls"] % 20 == 0:
        batch = next(iterator)
        pairs = tf.concat([batch["view1"], batch["view2"]], axis=2)
        tf.summary.image("augmented_views", pairs, step=step, max_outputs=8)
      state["calls"] += 1

    return write


class _LabelledStage(Stage):
  """Supervised training of a classifier on the labelled examples."""

  def training_source(self, cfg, source, print_fn=print):
    return labelled_source(cfg, source, print_fn)

  def dataset_fns(self, cfg, source, start_step, print_fn=print):
    return _finetune_dataset_fn(cfg, source, self.training_split(cfg),
                                start_step)

  def build_trainer(self, cfg, strategy, state, dataset, jit_compile,
                    print_fn=print):
    o = cfg.optimizer
    return finetune.FinetuneTrainer(
        strategy, state.model, state.optimizer, dataset,
        optimizer_name=o.optimizer, weight_decay=o.weight_decay,
        jit_compile=jit_compile)


@register(builder.TRAIN_MODE_FINETUNE)
class FinetuneStage(_LabelledStage):
  """Supervised training warm-started from a pretrained model, with the
  backbone frozen through `fine_tune_after_block`; below a few labels per
  class, a linear classifier on the frozen encoder (`small_set`)."""

  def fit_to_data(self, cfg, num_train):
    return small_set.resolve_small_set_finetune(cfg, num_train,
                                                explicit=cfg.overrides)


@register(builder.TRAIN_MODE_SUPERVISED)
class SupervisedStage(_LabelledStage):
  """The fine-tuning network trained from scratch (or from `checkpoint`'s
  weights as they are)."""


@register(builder.TRAIN_MODE_DISTILL)
class DistillStage(Stage):
  """A student matching a fine-tuned teacher on the unlabelled split (and,
  with distill_label_weight > 0, the labels of the labelled subset); its
  eval reports the teacher beside the student."""

  def __init__(self):
    self._teacher = None

  def training_split(self, cfg):
    return cfg.train.unlabelled_split or cfg.data.train_split

  def teacher(self, cfg: configs.ExperimentConfig,
              strategy: tf.distribute.Strategy,
              print_fn: PrintFn = print) -> keras.Model:
    """The teacher of `train.teacher_checkpoint`, loaded once per stage."""
    if self._teacher is None:
      self._teacher = loading.load_teacher(cfg.train.teacher_checkpoint,
                                           strategy, print_fn)
    return self._teacher

  def dataset_fns(self, cfg, source, start_step, print_fn=print):
    unlabelled = _finetune_dataset_fn(cfg, source, self.training_split(cfg),
                                      start_step)
    if not cfg.train.distill_label_weight > 0:
      return unlabelled
    labelled = _finetune_dataset_fn(
        cfg, labelled_source(cfg, source, print_fn), cfg.data.train_split,
        start_step)
    return {distill.UNLABELLED: unlabelled, distill.LABELLED: labelled}

  def build_trainer(self, cfg, strategy, state, dataset, jit_compile,
                    print_fn=print):
    t, o = cfg.train, cfg.optimizer
    return distill.DistillTrainer(
        strategy, self.teacher(cfg, strategy, print_fn), state.model,
        state.optimizer, dataset, num_classes=cfg.head.num_classes,
        optimizer_name=o.optimizer, weight_decay=o.weight_decay,
        temperature=t.distill_temperature,
        scale_by_temperature_squared=t.distill_temperature_squared,
        distill_label_weight=t.distill_label_weight, jit_compile=jit_compile)

  def evaluate_classifiers(self, cfg, strategy, model, dataset,
                           print_fn=print):
    results = super().evaluate_classifiers(cfg, strategy, model, dataset,
                                           print_fn)
    if cfg.train.teacher_checkpoint:
      teacher = self.teacher(cfg, strategy, print_fn)
      results.update({
          f"teacher_{k}": v for k, v in
          _classifier_results(cfg, strategy, teacher, dataset).items()})
    return results
