"""Per-stage `tf.data` pipelines (SPEC §6) over a `DataSource`.

Training pipelines (pretraining and fine-tuning share one skeleton):

  read records (shuffled files, this input pipeline's shard) -> shuffle ->
  repeat forever -> skip what a resumed run already consumed -> decode (with
  `cache`: decoded and cached before the shuffle instead) -> augment -> batch
  (per replica, drop_remainder) -> prefetch

Eval pipeline: read (no shuffle) -> preprocess -> pad with masked examples
(`eval_padding_target`) -> batch (full batches only) -> prefetch, a single
pass.

Deliberate differences from the reference:

* Augmentation is seeded: the example at position i of a pipeline's (repeated)
  stream is augmented with the stateless seed fold_in([seed, pipeline id], i),
  and file and buffer shuffles take `seed`. With `deterministic=True` (the
  default) a pipeline therefore yields the same batches every time it is built
  with the same seed and shard. `deterministic=False` lets the parallel map
  emit elements out of order (faster, as the reference allowed) but keeps each
  example's augmentation tied to its position.
* Labels stay int32 class ids; the trainer one-hots them if it needs to.
* Eval images of another size than image_size <= 32 (e.g. the 8x8 `digits`)
  are resized by `augment.build_eval_preprocess` instead of being rejected.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional

import tensorflow as tf

from tf_simclr.data import augment
from tf_simclr.data import sources

ExampleFn = Callable[[dict[str, tf.Tensor], tf.Tensor], dict[str, tf.Tensor]]

# Reference shuffle buffer, in per-replica batches: larger for small images,
# whose examples are cheap to hold.
SMALL_IMAGE_MAX_SIZE = 32
SMALL_IMAGE_SHUFFLE_MULTIPLIER = 50
LARGE_IMAGE_SHUFFLE_MULTIPLIER = 10


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> int:
  if not _is_int(value) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def _check_seed(seed: Any) -> int:
  # Non-negative so that it is also a valid `Dataset.shuffle` seed.
  if not _is_int(seed) or not 0 <= seed < 2**63:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  return int(seed)


def shuffle_buffer_size(per_replica_batch_size: int, image_size: int,
                        shuffle_buffer_multiplier: int = 0) -> int:
  """Examples held by a training pipeline's shuffle buffer.

  Args:
    per_replica_batch_size: examples per replica batch.
    image_size: output side length; selects the reference multiplier.
    shuffle_buffer_multiplier: buffer in per-replica batches; 0 selects the
      reference's 50 (image_size <= 32) or 10.

  Returns:
    per_replica_batch_size * multiplier.
  """
  _check_positive_int("per_replica_batch_size", per_replica_batch_size)
  _check_positive_int("image_size", image_size)
  if not _is_int(shuffle_buffer_multiplier) or shuffle_buffer_multiplier < 0:
    raise ValueError("shuffle_buffer_multiplier must be a non-negative "
                     f"integer, got {shuffle_buffer_multiplier!r}")
  multiplier = shuffle_buffer_multiplier
  if multiplier == 0:
    multiplier = (SMALL_IMAGE_SHUFFLE_MULTIPLIER
                  if image_size <= SMALL_IMAGE_MAX_SIZE
                  else LARGE_IMAGE_SHUFFLE_MULTIPLIER)
  return per_replica_batch_size * multiplier


def _image_and_label(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  # The augmentation contract takes exactly these keys; dropping the id also
  # keeps it out of the cache and the shuffle buffer.
  return {"image": example["image"], "label": example["label"]}


def _decoded(source: sources.DataSource,
             records: tf.data.Dataset) -> tf.data.Dataset:
  return source.decode_records(records).map(
      _image_and_label, num_parallel_calls=tf.data.AUTOTUNE)


def _pipeline_id(input_context: Optional[tf.distribute.InputContext]) -> int:
  return 0 if input_context is None else input_context.input_pipeline_id


def build_training_dataset(
    source: sources.DataSource,
    split: str,
    augment_fn: ExampleFn,
    *,
    per_replica_batch_size: int,
    image_size: int,
    input_context: Optional[tf.distribute.InputContext] = None,
    seed: int = 0,
    cache: bool = False,
    shuffle_buffer_multiplier: int = 0,
    deterministic: bool = True,
    start_batch: int = 0) -> tf.data.Dataset:
  """Endless augmented batches: the skeleton of every training pipeline.

  `build_pretrain_dataset` and `build_finetune_dataset` pass their
  augmentation here and forward the other keyword arguments unchanged.

  Args:
    source: where the examples come from.
    split: split to read.
    augment_fn: (example {"image", "label"}, stateless seed) -> the batch
      element.
    per_replica_batch_size: examples per batch (every batch is full).
    image_size: side length of the output images; selects the reference
      shuffle buffer.
    input_context: reads only this input pipeline's shard when given.
    seed: seeds the file order, the shuffle buffer and the augmentations.
    cache: cache the decoded raw examples in memory after the first pass.
    shuffle_buffer_multiplier: shuffle buffer in per-replica batches (0: 50
      for image_size <= 32, else 10).
    deterministic: keep element order fixed across parallel map calls.
    start_batch: batches of this pipeline already consumed (resume); the
      stream continues exactly where they ended.
  """
  if not _is_int(start_batch) or start_batch < 0:
    raise ValueError(f"start_batch must be an integer >= 0, got {start_batch!r}")
  buffer_size = shuffle_buffer_size(per_replica_batch_size, image_size,
                                    shuffle_buffer_multiplier)
  seed = _check_seed(seed)
  skipped = start_batch * per_replica_batch_size
  # Resuming at step k skips the examples the interrupted run consumed as
  # records (paths, indices, encoded images), so none of them is decoded.
  # Cached examples are decoded before the shuffle, and so are those of a
  # source that may drop records while decoding: skipping then counts
  # examples. Shuffles draw the same permutation whatever they hold, so both
  # orders yield one stream.
  skip_records = source.decodes_every_record and not cache
  dataset = source.make_records(split, shuffle_files=True,
                                input_context=input_context, seed=seed)
  if not skip_records:
    dataset = _decoded(source, dataset)
    if cache:
      dataset = dataset.cache()
  dataset = dataset.shuffle(buffer_size, seed=seed,
                            reshuffle_each_iteration=True).repeat()
  dataset = dataset.skip(skipped)
  if skip_records:
    dataset = _decoded(source, dataset)
  dataset = dataset.enumerate(start=skipped)
  # Shards get distinct streams even though they share `seed`.
  base_seed = tf.constant([seed, _pipeline_id(input_context)], tf.int64)

  def augment_at(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(base_seed,
                                                            position)
    return augment_fn(example, example_seed)

  dataset = dataset.map(augment_at, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  dataset = dataset.batch(per_replica_batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def build_pretrain_dataset(source: sources.DataSource,
                           split: str,
                           *,
                           image_size: int,
                           color_jitter_strength: float,
                           min_crop_area: float = 0.08,
                           flip_prob: float = 0.5,
                           **pipeline_options: Any) -> tf.data.Dataset:
  """Endless batches of two augmented views for contrastive pretraining.

  Args:
    source: where the examples come from.
    split: split to read.
    image_size: side length of the square views.
    color_jitter_strength: colour distortion strength s (SPEC §5.1).
    min_crop_area: lower end of the random crop's area range.
    flip_prob: probability of mirroring each view left-right.
    **pipeline_options: `build_training_dataset`'s keyword arguments
      (`per_replica_batch_size` is required; `input_context`, `seed`,
      `cache`, `shuffle_buffer_multiplier`, `deterministic`, `start_batch`).

  Returns:
    A dataset of {"view1": float32 [b, S, S, 3], "view2": float32 [b, S, S, 3],
    "label": int32 [b]}.
  """
  _check_positive_int("image_size", image_size)
  augment_fn = augment.build_pretrain_augment(image_size,
                                              color_jitter_strength,
                                              min_crop_area, flip_prob)
  return build_training_dataset(source, split, augment_fn,
                                image_size=image_size, **pipeline_options)


def build_finetune_dataset(source: sources.DataSource,
                           split: str,
                           *,
                           image_size: int,
                           min_crop_area: float = 0.08,
                           flip_prob: float = 0.5,
                           **pipeline_options: Any) -> tf.data.Dataset:
  """Endless batches of crop-and-flip augmented images for fine-tuning.

  Args:
    source: where the examples come from.
    split: split to read.
    image_size: side length of the square images.
    min_crop_area: lower end of the random crop's area range.
    flip_prob: probability of mirroring an image left-right.
    **pipeline_options: `build_training_dataset`'s keyword arguments, as for
      `build_pretrain_dataset`.

  Returns:
    A dataset of {"image": float32 [b, S, S, 3], "label": int32 [b]}.
  """
  _check_positive_int("image_size", image_size)
  augment_fn = augment.build_finetune_augment(image_size, min_crop_area,
                                              flip_prob)
  return build_training_dataset(source, split, augment_fn,
                                image_size=image_size, **pipeline_options)


def _replicas_per_pipeline(
    input_context: Optional[tf.distribute.InputContext]) -> int:
  if input_context is None:
    return 1
  return max(1, input_context.num_replicas_in_sync //
             input_context.num_input_pipelines)


def eval_padding_target(num_examples: int, per_replica_batch_size: int,
                        input_context: Optional[tf.distribute.InputContext]
                        = None) -> int:
  """Examples (real and padding) each eval input pipeline yields.

  Every pipeline yields the same number of full batches, a multiple of the
  replicas it feeds, so every replica runs every step on a full batch: the
  step has one static shape and no replica waits for another's partial batch.
  The count covers a shard of ceil(num_examples / pipelines) examples, the
  largest a source dealing examples round-robin produces.

  Args:
    num_examples: examples of the whole split.
    per_replica_batch_size: examples per replica batch.
    input_context: the pipeline's context; None for a single pipeline.
  """
  pipelines = 1 if input_context is None else input_context.num_input_pipelines
  group = per_replica_batch_size * _replicas_per_pipeline(input_context)
  shard = -(-num_examples // pipelines)
  return max(1, -(-shard // group)) * group


def build_eval_dataset(
    source: sources.DataSource,
    split: str,
    *,
    per_replica_batch_size: int,
    image_size: int,
    input_context: Optional[tf.distribute.InputContext] = None
) -> tf.data.Dataset:
  """One pass over a split, in order, padded to full batches and masked.

  The split's examples come first, each with mask 1; examples with a zero
  image, label 0 and mask 0 follow until the pipeline holds
  `eval_padding_target` examples. A shard larger than that (a source sharding
  by files) is never cut: it is padded on to the next multiple of
  per_replica_batch_size x the replicas the pipeline feeds. Metrics weight by
  the mask, so every example counts exactly once under any number of replicas.

  Args:
    source: where the examples come from.
    split: split to read.
    per_replica_batch_size: examples per batch; every batch is full.
    image_size: side length of the square images.
    input_context: reads only this input pipeline's shard when given.

  Returns:
    A dataset of {"image": float32 [b, S, S, 3], "label": int32 [b],
    "mask": float32 [b]} (1 for a split example, 0 for padding).
  """
  _check_positive_int("per_replica_batch_size", per_replica_batch_size)
  _check_positive_int("image_size", image_size)
  preprocess = augment.build_eval_preprocess(image_size)
  target = eval_padding_target(source.num_examples(split),
                               per_replica_batch_size, input_context)
  group = per_replica_batch_size * _replicas_per_pipeline(input_context)

  def prepare(example):
    prepared = preprocess(_image_and_label(example))
    prepared["mask"] = tf.constant(1.0)
    return prepared

  dataset = source.make_dataset(split, shuffle_files=False,
                                input_context=input_context)
  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros([image_size, image_size, 3], tf.float32),
      "label": tf.constant(0, tf.int32),
      "mask": tf.constant(0.0)}).repeat()

  def keep(position, example):
    # Padding stops at the first padding example at or past the target that
    # starts a new group of full batches.
    return ((position < target) | (example["mask"] > 0) |
            (position % group != 0))

  dataset = (dataset.concatenate(padding).enumerate().take_while(keep)
             .map(lambda position, example: example))
  dataset = dataset.batch(per_replica_batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def make_dataset_fn(
    build_fn: Callable[..., tf.data.Dataset],
    source: sources.DataSource,
    split: str,
    *,
    global_batch_size: int,
    start_step: Optional[int] = None,
    **kwargs: Any) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """Wraps a `build_*_dataset` for `strategy.distribute_datasets_from_function`.

  Args:
    build_fn: `build_pretrain_dataset`, `build_finetune_dataset` or
      `build_eval_dataset`.
    source: where the examples come from.
    split: split to read.
    global_batch_size: batch over all replicas; must divide evenly.
    start_step: training steps a resumed run already took; each input
      pipeline then skips the batches it fed them (`start_batch`). None for
      a builder without `start_batch` (eval).
    **kwargs: further keyword arguments of `build_fn` (not
      `per_replica_batch_size`, `input_context` or `start_batch`, which come
      from here).

  Returns:
    A function of the strategy's `InputContext` building that input
    pipeline's shard, batched at the per-replica size.
  """
  _check_positive_int("global_batch_size", global_batch_size)
  if start_step is not None and (not _is_int(start_step) or start_step < 0):
    raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")
  for reserved in ("per_replica_batch_size", "input_context", "start_batch"):
    if reserved in kwargs:
      raise ValueError(
          f"{reserved} is set by make_dataset_fn, got {reserved}="
          f"{kwargs[reserved]!r}")

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    if global_batch_size % input_context.num_replicas_in_sync:
      raise ValueError(
          f"global_batch_size must be divisible by the "
          f"{input_context.num_replicas_in_sync} replicas, got "
          f"{global_batch_size}")
    options = dict(kwargs)
    if start_step is not None:
      # Each input pipeline feeds num_replicas / num_pipelines replicas.
      options["start_batch"] = (start_step *
                                input_context.num_replicas_in_sync //
                                input_context.num_input_pipelines)
    return build_fn(
        source, split,
        per_replica_batch_size=input_context.get_per_replica_batch_size(
            global_batch_size),
        input_context=input_context, **options)

  return dataset_fn
