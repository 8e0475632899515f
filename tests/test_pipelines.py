"""Tests of tf_simclr.data.pipelines on the digits and image-folder sources."""

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.data import pipelines
from tf_simclr.data import sources


@pytest.fixture(scope="module")
def digits():
  return sources.get_source("digits")


def _context(pipeline_id, num_pipelines=2):
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=num_pipelines)


def _take(dataset, count):
  return list(dataset.take(count).as_numpy_iterator())


def _pretrain(source, seed, **kwargs):
  # No colour distortion by default: its large graph is slow to build, and
  # crop and flip already make the stream seed-dependent.
  options = dict(per_replica_batch_size=8, image_size=16,
                 color_jitter_strength=0.0, seed=seed,
                 shuffle_buffer_multiplier=1)
  options.update(kwargs)
  return pipelines.build_pretrain_dataset(source, "train", **options)


def test_shuffle_buffer_size():
  assert pipelines.shuffle_buffer_size(8, 32) == 400
  assert pipelines.shuffle_buffer_size(8, 33) == 80
  assert pipelines.shuffle_buffer_size(8, 224, 3) == 24
  with pytest.raises(ValueError, match="shuffle_buffer_multiplier"):
    pipelines.shuffle_buffer_size(8, 32, -1)
  with pytest.raises(ValueError, match="per_replica_batch_size"):
    pipelines.shuffle_buffer_size(0, 32)


def test_pretrain_element_spec_and_values(digits):
  dataset = _pretrain(digits, seed=0, color_jitter_strength=0.5)
  spec = dataset.element_spec
  assert set(spec) == {"view1", "view2", "label"}
  for view in ("view1", "view2"):
    assert spec[view].shape == (8, 16, 16, 3)  # Static: drop_remainder.
    assert spec[view].dtype == tf.float32
  assert spec["label"].shape == (8,) and spec["label"].dtype == tf.int32
  batch = _take(dataset, 1)[0]
  assert batch["view1"].min() >= 0.0 and batch["view1"].max() <= 1.0
  assert not np.array_equal(batch["view1"], batch["view2"])
  assert set(batch["label"]) <= set(range(10))


def test_pretrain_is_reproducible_per_seed(digits):
  first = _take(_pretrain(digits, seed=1), 2)
  again = _take(_pretrain(digits, seed=1), 2)
  other = _take(_pretrain(digits, seed=2), 1)
  for a, b in zip(first, again):
    for key in ("view1", "view2", "label"):
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]["label"], other[0]["label"])
  assert not np.allclose(first[0]["view1"], other[0]["view1"])
  cached = _take(_pretrain(digits, seed=1, cache=True), 2)
  for a, b in zip(first, cached):
    np.testing.assert_array_equal(a["view1"], b["view1"])


def test_each_example_gets_its_position_seed(digits, monkeypatch):
  def seed_recorder(image_size, color_jitter_strength, min_crop_area,
                    flip_prob):
    del image_size, color_jitter_strength, min_crop_area, flip_prob
    return lambda example, seed: {"seed": seed, "label": example["label"]}

  monkeypatch.setattr(pipelines.augment, "build_pretrain_augment",
                      seed_recorder)
  batches = _take(_pretrain(digits, seed=7, input_context=_context(1)), 2)
  seeds = np.concatenate([b["seed"] for b in batches])
  # fold_in([seed, pipeline id], position) over the int64 stream position;
  # its first half depends only on (seed, pipeline id).
  expected = [tf.random.experimental.stateless_fold_in(
      tf.constant([7, 1], tf.int64), tf.constant(i, tf.int64)).numpy()
              for i in range(16)]
  np.testing.assert_array_equal(seeds, expected)
  np.testing.assert_array_equal(seeds[:, 1], np.arange(16))
  assert seeds[0, 0] == 4883427707394007725


def test_shards_get_distinct_streams(digits):
  shard0 = _take(_pretrain(digits, seed=1, input_context=_context(0)), 1)[0]
  shard1 = _take(_pretrain(digits, seed=1, input_context=_context(1)), 1)[0]
  assert not np.allclose(shard0["view1"], shard1["view1"])


def test_finetune_dataset(digits):
  dataset = pipelines.build_finetune_dataset(
      digits, "train", per_replica_batch_size=6, image_size=12, seed=3,
      shuffle_buffer_multiplier=2)
  spec = dataset.element_spec
  assert set(spec) == {"image", "label"}
  assert spec["image"].shape == (6, 12, 12, 3)
  assert spec["label"].shape == (6,)
  # 1,438 examples: an endless stream of full batches across epoch borders.
  batches = _take(dataset, 250)
  assert len(batches) == 250
  assert all(b["image"].shape == (6, 12, 12, 3) for b in batches)
  labels = np.concatenate([b["label"] for b in batches])
  counts = np.bincount(labels, minlength=10)
  assert counts.sum() == 1500 and counts.min() > 100


def test_eval_covers_split_once_in_order(digits):
  dataset = pipelines.build_eval_dataset(
      digits, "test", per_replica_batch_size=50, image_size=8)
  # Static shapes: 359 examples become 8 full batches, the last 41 padding.
  assert dataset.element_spec["image"].shape.as_list() == [50, 8, 8, 3]
  batches = list(dataset.as_numpy_iterator())
  assert [len(b["label"]) for b in batches] == [50] * 8
  masks = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(masks, [1.0] * 359 + [0.0] * 41)
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  raw = list(digits.make_dataset("test").as_numpy_iterator())
  np.testing.assert_array_equal(labels[:359], [ex["label"] for ex in raw])
  # At the native size eval preprocessing is only the uint8 -> [0, 1] scaling.
  np.testing.assert_allclose(
      images[:359], np.stack([ex["image"] for ex in raw]) / 255.0, atol=1e-7)
  assert not images[359:].any() and not labels[359:].any()


def test_eval_shards_cover_split_once(digits):
  shards = [list(pipelines.build_eval_dataset(
      digits, "test", per_replica_batch_size=64, image_size=8,
      input_context=_context(i)).as_numpy_iterator()) for i in range(2)]
  # Both pipelines run the same number of full steps (ceil(180 / 64) = 3).
  assert [[len(b["label"]) for b in shard] for shard in shards] == [[64] * 3] * 2
  sizes = [int(sum(b["mask"].sum() for b in shard)) for shard in shards]
  assert sizes == [180, 179]
  labels = np.concatenate([b["label"][b["mask"] > 0]
                           for shard in shards for b in shard])
  np.testing.assert_array_equal(np.bincount(labels),
                                [36, 36, 35, 37, 36, 36, 36, 36, 35, 36])


@pytest.mark.parametrize("pipelines_, replicas, expected", [
    (1, 1, 360),  # 45 batches of 8 for 359 examples.
    (1, 2, 368),  # Whole steps: 23 pairs of batches.
    (2, 2, 184),  # Per pipeline: 180 examples at most, 23 batches.
    (2, 4, 192),  # 12 steps of 2 batches each.
])
def test_eval_padding_target(pipelines_, replicas, expected):
  context = tf.distribute.InputContext(num_input_pipelines=pipelines_,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=replicas)
  assert pipelines.eval_padding_target(359, 8, context) == expected
  assert pipelines.eval_padding_target(359, 8) == 360
  assert pipelines.eval_padding_target(0, 8) == 8


def test_eval_never_cuts_a_shard_larger_than_expected(digits, monkeypatch):
  # A source sharding by files can hand a pipeline more than its share; it is
  # padded on to whole steps instead of being cut at the target.
  monkeypatch.setattr(digits, "num_examples", lambda split: 100)
  context = tf.distribute.InputContext(num_input_pipelines=1,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  batches = list(pipelines.build_eval_dataset(
      digits, "test", per_replica_batch_size=10, image_size=8,
      input_context=context).as_numpy_iterator())
  assert len(batches) == 36  # 359 examples -> 18 steps of 2 x 10.
  assert sum(b["mask"].sum() for b in batches) == 359


def test_eval_resizes_small_images_to_image_size(digits):
  dataset = pipelines.build_eval_dataset(
      digits, "test", per_replica_batch_size=4, image_size=32)
  batch = _take(dataset, 1)[0]
  assert batch["image"].shape == (4, 32, 32, 3)


def test_argument_validation(digits):
  with pytest.raises(ValueError, match="per_replica_batch_size"):
    _pretrain(digits, seed=0, per_replica_batch_size=0)
  with pytest.raises(ValueError, match="seed must be a non-negative integer"):
    _pretrain(digits, seed=None)
  with pytest.raises(ValueError, match="image_size"):
    pipelines.build_eval_dataset(digits, "test", per_replica_batch_size=4,
                                 image_size=-1)


def test_make_dataset_fn_with_two_replicas(digits, two_cpu_strategy):
  dataset_fn = pipelines.make_dataset_fn(
      pipelines.build_pretrain_dataset, digits, "train", global_batch_size=8,
      image_size=16, color_jitter_strength=0.0, seed=0,
      shuffle_buffer_multiplier=1)
  distributed = two_cpu_strategy.distribute_datasets_from_function(dataset_fn)
  batch = next(iter(distributed))
  shapes = [t.shape for t in
            two_cpu_strategy.experimental_local_results(batch["view1"])]
  assert shapes == [(4, 16, 16, 3), (4, 16, 16, 3)]
  with pytest.raises(ValueError, match="global_batch_size must be divisible"):
    pipelines.make_dataset_fn(pipelines.build_eval_dataset, digits, "test",
                              global_batch_size=7, image_size=8)(_context(0))
  with pytest.raises(ValueError, match="input_context is set by"):
    pipelines.make_dataset_fn(pipelines.build_eval_dataset, digits, "test",
                              global_batch_size=8, image_size=8,
                              input_context=_context(0))


def test_make_dataset_fn_resumes_each_pipeline_at_its_own_batch(digits):
  # 2 pipelines feeding 4 replicas: step 3 consumed 3 x 2 batches of each.
  context = tf.distribute.InputContext(num_input_pipelines=2,
                                       input_pipeline_id=1,
                                       num_replicas_in_sync=4)
  dataset_fn = pipelines.make_dataset_fn(
      pipelines.build_finetune_dataset, digits, "train", global_batch_size=16,
      start_step=3, image_size=8, seed=5, shuffle_buffer_multiplier=1)
  full = _take(_finetune(digits, input_context=context), 7)
  resumed = _take(dataset_fn(context), 1)
  np.testing.assert_array_equal(full[6]["image"], resumed[0]["image"])
  with pytest.raises(ValueError, match="start_batch is set by"):
    pipelines.make_dataset_fn(pipelines.build_finetune_dataset, digits,
                              "train", global_batch_size=16, image_size=8,
                              start_step=0, start_batch=2)
  with pytest.raises(ValueError, match="start_step must be an integer >= 0"):
    pipelines.make_dataset_fn(pipelines.build_finetune_dataset, digits,
                              "train", global_batch_size=16, image_size=8,
                              start_step=-1)


def test_cifar10_image_folder_batch(cifar10_dir):
  source = sources.get_source("image_folder", str(cifar10_dir))
  assert source.class_names == ("airplane", "automobile", "bird", "cat",
                                "deer", "dog", "frog", "horse", "ship",
                                "truck")
  assert source.num_examples("test") == 10000
  dataset = pipelines.build_pretrain_dataset(
      source, "test", per_replica_batch_size=4, image_size=32,
      color_jitter_strength=0.0, shuffle_buffer_multiplier=1)
  batch = _take(dataset, 1)[0]
  assert batch["view1"].shape == (4, 32, 32, 3)
  assert batch["label"].shape == (4,)
  eval_batch = _take(pipelines.build_eval_dataset(
      source, "test", per_replica_batch_size=4, image_size=32), 1)[0]
  assert eval_batch["image"].shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(eval_batch["label"], [0, 0, 0, 0])


@pytest.mark.parametrize("source_name", ["digits", "image_folder"])
def test_training_shards_hold_disjoint_examples(source_name, digits,
                                                tmp_path):
  # Every worker reads only its shard, so no two workers ever train on the
  # same example in a step (or anywhere in an epoch).
  if source_name == "digits":
    source = digits
  else:
    for index in range(6):
      folder = tmp_path / "train" / f"class{index % 2}"
      folder.mkdir(parents=True, exist_ok=True)
      tf.io.write_file(str(folder / f"{index}.png"),
                       tf.io.encode_png(tf.fill([4, 4, 3], tf.constant(
                           index, tf.uint8))))
    source = sources.get_source("image_folder", str(tmp_path))
  shards = []
  for pipeline_id in range(2):
    dataset = source.make_dataset("train", shuffle_files=True, seed=3,
                                  input_context=_context(pipeline_id))
    shards.append([bytes(e["id"]) for e in dataset.as_numpy_iterator()])
  assert not set(shards[0]) & set(shards[1])
  assert len(shards[0]) + len(shards[1]) == source.num_examples("train")
  assert len(set(shards[0]) | set(shards[1])) == source.num_examples("train")


def _finetune(source, **kwargs):
  options = dict(per_replica_batch_size=4, image_size=8, seed=5,
                 shuffle_buffer_multiplier=1)
  options.update(kwargs)
  return pipelines.build_finetune_dataset(source, "train", **options)


@pytest.mark.parametrize("cache", [False, True])
def test_resumed_stream_continues_the_uninterrupted_one(digits, cache):
  # 1,438 examples in batches of 8: batch 179 straddles the first epoch's
  # end, so the resumed stream also crosses into the reshuffled second one.
  start, count = 178, 4
  full = _take(_finetune(digits, per_replica_batch_size=8, cache=cache),
               start + count)
  resumed = _take(_finetune(digits, per_replica_batch_size=8, cache=cache,
                            start_batch=start), count)
  for a, b in zip(full[start:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_resume_never_decodes_the_consumed_files(tmp_path):
  """Files 0..N-1 of the stream become undecodable; resuming at N works."""
  count, batch, start = 24, 4, 3
  paths = []
  for index in range(count):
    folder = tmp_path / "train" / f"class{index % 2}"
    folder.mkdir(parents=True, exist_ok=True)
    paths.append(folder / f"{index:02d}.png")
    # Constant images: the value names the file after cropping and resizing.
    tf.io.write_file(str(paths[-1]), tf.io.encode_png(
        tf.fill([4, 4, 3], tf.constant(8 * index, tf.uint8))))
  epoch = _take(_finetune(sources.get_source("image_folder", str(tmp_path))),
                count // batch)
  order = np.round(np.concatenate([b["image"][:, 0, 0, 0] for b in epoch])
                   * 255 / 8).astype(int)
  assert sorted(order) == list(range(count))
  for index in order[:start * batch]:
    # A JPEG signature passes the listing check; decoding then fails.
    paths[index].write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")

  corrupted = sources.get_source("image_folder", str(tmp_path))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="corrupt or truncated image file"):
    _take(_finetune(corrupted), 1)
  resumed = _take(_finetune(corrupted, start_batch=start), len(epoch) - start)
  assert len(resumed) == len(epoch) - start
  for a, b in zip(epoch[start:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
