"""Tests of tf_simclr.data.sources: digits, image folders and TFDS."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn import datasets as sk_datasets

from tf_simclr.data import sources


def _context(pipeline_id, num_pipelines=2):
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=num_pipelines)


def _read_all(dataset):
  return [{k: v for k, v in ex.items()} for ex in dataset.as_numpy_iterator()]


def _ids(dataset):
  return [ex["id"].decode() for ex in dataset.as_numpy_iterator()]


# ----------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
  return sources.get_source("digits")


def test_digits_metadata(digits):
  assert digits.name == "digits"
  assert digits.num_classes == 10
  assert digits.class_names == tuple("0123456789")
  assert set(digits.split_names) == {"train", "test"}
  assert digits.num_examples("train") == 1438
  assert digits.num_examples("test") == 359


def test_digits_split_is_stratified_disjoint_and_pinned(digits):
  train_ids, train_labels = digits.example_index("train")
  test_ids, test_labels = digits.example_index("test")
  # 20 % of each class (sklearn's class sizes 178, 182, 177, ...), rounded.
  np.testing.assert_array_equal(np.bincount(test_labels),
                                [36, 36, 35, 37, 36, 36, 36, 36, 35, 36])
  np.testing.assert_array_equal(np.bincount(train_labels),
                                [142, 146, 142, 146, 145, 146, 145, 143, 139,
                                 144])
  assert not set(train_ids) & set(test_ids)
  assert sorted(map(int, train_ids + test_ids)) == list(range(1797))
  # The split depends only on sha256 of the ids: pinned across machines.
  assert test_ids[:8] == ["0", "1", "3", "6", "8", "9", "12", "14"]
  again = sources.get_source("digits")
  assert again.example_index("test")[0] == test_ids


def test_digits_examples_match_sklearn(digits):
  sk = sk_datasets.load_digits()
  examples = _read_all(digits.make_dataset("train"))
  assert len(examples) == 1438
  first = examples[0]
  assert first["id"] == b"2"
  assert first["image"].dtype == np.uint8
  assert first["image"].shape == (8, 8, 3)
  assert first["label"].dtype == np.int32 and first["label"] == 2
  # Row 0 of sample 2 is 0 0 0 4 15 12 0 0 (of 16): round(v * 255 / 16).
  np.testing.assert_array_equal(first["image"][0, :, 0],
                                [0, 0, 0, 64, 239, 191, 0, 0])
  for ex in examples[::97]:
    index = int(ex["id"])
    expected = np.round(sk.images[index] * 255.0 / 16.0).astype(np.uint8)
    for channel in range(3):
      np.testing.assert_array_equal(ex["image"][..., channel], expected)
    assert ex["label"] == sk.target[index]


def test_digits_shards_are_disjoint_and_cover(digits):
  shards = [_ids(digits.make_dataset("test", input_context=_context(i)))
            for i in range(2)]
  assert [len(s) for s in shards] == [180, 179]
  assert not set(shards[0]) & set(shards[1])
  test_ids = digits.example_index("test")[0]
  assert sorted(shards[0] + shards[1]) == sorted(test_ids)


def test_digits_shuffle_is_seeded(digits):
  plain = _ids(digits.make_dataset("test"))
  first = _ids(digits.make_dataset("test", shuffle_files=True, seed=3))
  second = _ids(digits.make_dataset("test", shuffle_files=True, seed=3))
  other = _ids(digits.make_dataset("test", shuffle_files=True, seed=4))
  assert first == second
  assert first != other
  assert first != plain
  assert sorted(first) == sorted(plain)


def test_split_name_is_validated(digits):
  with pytest.raises(ValueError, match=r"split must be one of .*'validation'"):
    digits.num_examples("validation")


# ----------------------------------------------------------------------------
# image_folder


def _save(path, array, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, fmt)


def _pattern(height, width, channels, offset):
  values = (np.arange(height * width * channels) * 7 + offset) % 256
  shape = (height, width, channels) if channels > 1 else (height, width)
  return values.reshape(shape).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
  """train/{ant,cat,dog} and test/{cat,dog}, mixed formats, modes and sizes."""
  root = tmp_path / "images"
  arrays = {
      "train/dog/d0.jpg": (_pattern(10, 12, 3, 0), "JPEG"),
      "train/dog/d1.PNG": (_pattern(9, 9, 3, 1), "PNG"),
      "train/cat/c0.png": (_pattern(7, 5, 1, 2), "PNG"),
      "train/cat/c1.JPEG": (_pattern(6, 6, 1, 3), "JPEG"),
      "train/ant/a0.png": (_pattern(8, 8, 3, 4), "PNG"),
      "test/cat/t0.png": (_pattern(4, 4, 3, 5), "PNG"),
      "test/dog/t1.jpg": (_pattern(5, 3, 3, 6), "JPEG"),
  }
  for relpath, (array, fmt) in arrays.items():
    _save(str(root / relpath), array, fmt)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return root, {k: v[0] for k, v in arrays.items()}


def test_image_folder_lists_sorted_classes_and_files(folder):
  root, _ = folder
  source = sources.get_source("image_folder", str(root))
  assert source.class_names == ("ant", "cat", "dog")
  assert source.num_classes == 3
  assert source.split_names == ("test", "train")
  assert source.num_examples("train") == 5
  assert source.num_examples("test") == 2
  assert source.skipped_count("train") == 0
  ids, labels = source.example_index("train")
  assert ids == ["train/ant/a0.png", "train/cat/c0.png", "train/cat/c1.JPEG",
                 "train/dog/d0.jpg", "train/dog/d1.PNG"]
  np.testing.assert_array_equal(labels, [0, 1, 1, 2, 2])
  # The test split reuses the train split's class ids.
  test_ids, test_labels = source.example_index("test")
  assert test_ids == ["test/cat/t0.png", "test/dog/t1.jpg"]
  np.testing.assert_array_equal(test_labels, [1, 2])


def test_image_folder_decodes_every_format_to_rgb(folder):
  root, arrays = folder
  source = sources.get_source("image_folder", str(root))
  examples = {ex["id"].decode(): ex
              for ex in source.make_dataset("train").as_numpy_iterator()}
  assert sorted(examples) == sorted(k for k in arrays if k.startswith("train"))
  expected_labels = {"ant": 0, "cat": 1, "dog": 2}
  for relpath, ex in examples.items():
    array = arrays[relpath]
    assert ex["image"].dtype == np.uint8
    assert ex["image"].shape == array.shape[:2] + (3,)
    assert ex["label"] == expected_labels[relpath.split("/")[1]]
    if array.ndim == 2:  # Grey files come back with three equal channels.
      np.testing.assert_array_equal(ex["image"][..., 1], ex["image"][..., 0])
      np.testing.assert_array_equal(ex["image"][..., 2], ex["image"][..., 0])
    if relpath.lower().endswith(".png"):  # Lossless: exact pixels.
      rgb = np.repeat(array[..., None], 3, -1) if array.ndim == 2 else array
      np.testing.assert_array_equal(ex["image"], rgb)


def test_image_folder_shards_and_shuffle(folder):
  root, _ = folder
  source = sources.get_source("image_folder", str(root))
  shards = [_ids(source.make_dataset("train", input_context=_context(i)))
            for i in range(2)]
  assert shards == [["train/ant/a0.png", "train/cat/c1.JPEG",
                     "train/dog/d1.PNG"],
                    ["train/cat/c0.png", "train/dog/d0.jpg"]]
  first = _ids(source.make_dataset("train", shuffle_files=True, seed=5))
  again = _ids(source.make_dataset("train", shuffle_files=True, seed=5))
  assert first == again
  assert sorted(first) == sorted(shards[0] + shards[1])


def test_image_folder_lists_each_folder_once_per_source(folder, monkeypatch):
  # On an object store every listing is a request: a split is listed when
  # first used, never again for later epochs or datasets.
  root, _ = folder
  listed, opened = [], []
  listdir, gfile = tf.io.gfile.listdir, tf.io.gfile.GFile

  def counting_listdir(path):
    listed.append(os.path.relpath(path, root))
    return listdir(path)

  def counting_gfile(path, *args, **kwargs):
    opened.append(os.path.relpath(path, root))
    return gfile(path, *args, **kwargs)

  monkeypatch.setattr(tf.io.gfile, "listdir", counting_listdir)
  monkeypatch.setattr(tf.io.gfile, "GFile", counting_gfile)
  source = sources.get_source("image_folder", str(root))
  for _ in range(2):
    assert source.num_examples("train") == 5
    source.example_index("train")
    epochs = source.make_dataset("train", shuffle_files=True, seed=3)
    assert len(_ids(epochs.repeat(3))) == 15
  assert sorted(listed) == [".", "train", "train", "train/ant", "train/cat",
                            "train/dog"]
  # One signature read per image file, the first time the split is listed.
  assert sorted(opened) == ["train/ant/a0.png", "train/cat/c0.png",
                            "train/cat/c1.JPEG", "train/dog/d0.jpg",
                            "train/dog/d1.PNG"]


def test_image_folder_rejects_file_without_image_signature(folder):
  root, _ = folder
  (root / "train" / "cat" / "x.jpg").write_bytes(b"garbage, not a JPEG")
  source = sources.get_source("image_folder", str(root))
  with pytest.raises(ValueError, match=r"train/cat/x\.jpg"):
    source.num_examples("train")
  skipping = sources.get_source("image_folder", str(root),
                                skip_corrupt_images=True)
  assert skipping.num_examples("train") == 5
  assert skipping.skipped_count("train") == 1
  assert skipping.skipped_files("train") == ["train/cat/x.jpg"]
  assert "train/cat/x.jpg" not in _ids(skipping.make_dataset("train"))


def _truncated_jpeg(path):
  buffer = io.BytesIO()
  Image.fromarray(_pattern(40, 40, 3, 9)).save(buffer, "JPEG")
  path.write_bytes(buffer.getvalue()[:200])  # Valid header, missing body.


def test_image_folder_names_file_that_fails_to_decode(folder):
  root, _ = folder
  _truncated_jpeg(root / "train" / "dog" / "broken.jpg")
  source = sources.get_source("image_folder", str(root))
  assert source.num_examples("train") == 6  # Header check passes.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"train/dog/broken\.jpg"):
    _ids(source.make_dataset("train"))
  skipping = sources.get_source("image_folder", str(root),
                                skip_corrupt_images=True)
  assert _ids(skipping.make_dataset("train")) == [
      "train/ant/a0.png", "train/cat/c0.png", "train/cat/c1.JPEG",
      "train/dog/d0.jpg", "train/dog/d1.PNG"]


def test_image_folder_errors(tmp_path, folder):
  with pytest.raises(ValueError, match="data_dir must name"):
    sources.get_source("image_folder", None)
  with pytest.raises(ValueError, match="not an existing directory"):
    sources.get_source("image_folder", str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no split folders"):
    sources.get_source("image_folder", str(tmp_path / "empty"))
  (tmp_path / "noclass" / "train").mkdir(parents=True)
  with pytest.raises(ValueError, match="no class folders"):
    sources.get_source("image_folder", str(tmp_path / "noclass"))
  (tmp_path / "noimages" / "train" / "cat").mkdir(parents=True)
  source = sources.get_source("image_folder", str(tmp_path / "noimages"))
  with pytest.raises(ValueError, match="holds no"):
    source.num_examples("train")
  root, _ = folder
  source = sources.get_source("image_folder", str(root))
  with pytest.raises(ValueError, match=r"split must be one of \['test', "
                     r"'train'\].*'validation'"):
    source.make_dataset("validation")
  _save(str(root / "test" / "zebra" / "z.png"), _pattern(3, 3, 3, 0), "PNG")
  with pytest.raises(ValueError, match=r"\['zebra'\]"):
    sources.get_source("image_folder", str(root)).num_examples("test")


# ----------------------------------------------------------------------------
# TFDS and name dispatch


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tiny grey-scale TFDS dataset prepared offline into a temporary dir."""
  import tensorflow_datasets as tfds

  class TinyGreyDigits(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
    """Three classes of constant 6x6 grey images."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(6, 6, 1)),
              "label": tfds.features.ClassLabel(names=["x", "y", "z"]),
          }),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(10),
              "test": self._generate_examples(4)}

    def _generate_examples(self, count):
      for i in range(count):
        yield i, {"image": np.full((6, 6, 1), 10 * i, np.uint8),
                  "label": i % 3}

  data_dir = tmp_path_factory.mktemp("tfds")
  # Four files per split, so that two input pipelines get two files each.
  TinyGreyDigits(data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=4))
  return data_dir


def test_tfds_source_reads_prepared_dataset(tfds_dir):
  # Read back without the builder class, as a copied prepared folder would be.
  source = sources.get_source("tiny_grey_digits", str(tfds_dir))
  assert source.num_classes == 3
  assert source.class_names == ("x", "y", "z")
  assert source.split_names == ("test", "train")
  assert source.num_examples("train") == 10
  assert source.num_examples("test") == 4
  assert source.num_examples("train[:50%]") == 5
  examples = _read_all(source.make_dataset("train"))
  assert len(examples) == 10
  values = []
  for ex in examples:
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (6, 6, 3)
    assert ex["label"].dtype == np.int32
    value = int(ex["image"][0, 0, 0])
    np.testing.assert_array_equal(ex["image"], value)  # Grey -> 3 equal chans.
    assert ex["label"] == (value // 10) % 3
    assert ex["id"].decode().startswith("tiny_grey_digits-train.tfrecord")
    values.append(value)
  assert sorted(values) == list(range(0, 100, 10))
  ids, labels = source.example_index("train")
  assert sorted(ids) == sorted(ex["id"].decode() for ex in examples)
  assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
  with pytest.raises(ValueError, match="split must be one of"):
    source.num_examples("validation")


def _file_of(tfds_id):
  return tfds_id.rsplit("__", 1)[0]


def test_tfds_pipelines_read_their_own_files_interleaved(tfds_dir):
  source = sources.get_source("tiny_grey_digits", str(tfds_dir))
  shards = [_ids(source.make_dataset("train", shuffle_files=True, seed=1,
                                     input_context=_context(i)))
            for i in range(2)]
  files = [{_file_of(i) for i in shard} for shard in shards]
  assert [len(f) for f in files] == [2, 2]
  assert not files[0] & files[1]
  assert sorted(shards[0] + shards[1]) == sorted(source.example_index(
      "train")[0])
  for shard in shards:
    # Block length 1: consecutive examples come from the two files in turn.
    assert _file_of(shard[0]) != _file_of(shard[1])
  # More pipelines than files: each reads an even range of examples instead.
  ranges = [_ids(source.make_dataset("train", input_context=_context(i, 5)))
            for i in range(5)]
  assert [len(r) for r in ranges] == [2] * 5
  assert sorted(sum(ranges, [])) == sorted(source.example_index("train")[0])


def test_tfds_records_stay_encoded_until_decoded(tfds_dir):
  source = sources.get_source("tiny_grey_digits", str(tfds_dir))
  records = source.make_records("train", shuffle_files=True, seed=2)
  assert records.element_spec["image"].dtype == tf.string
  decoded = _read_all(source.decode_records(records))
  again = _read_all(source.make_dataset("train", shuffle_files=True, seed=2))
  assert [e["id"] for e in decoded] == [e["id"] for e in again]
  for a, b in zip(decoded, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (6, 6, 3)


def test_tfds_resumed_stream_continues_the_uninterrupted_one(tfds_dir):
  from tf_simclr.data import pipelines
  source = sources.get_source("tiny_grey_digits", str(tfds_dir))

  def stream(start_batch, count):
    # Ten examples in batches of 4: batch 3 lies in the second epoch.
    return list(pipelines.build_finetune_dataset(
        source, "train", per_replica_batch_size=4, image_size=6, seed=4,
        shuffle_buffer_multiplier=1, start_batch=start_batch
    ).take(count).as_numpy_iterator())

  full, resumed = stream(0, 5), stream(3, 2)
  for a, b in zip(full[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_tfds_not_prepared_error(tmp_path):
  with pytest.raises(sources.DatasetNotPreparedError) as info:
    sources.get_source("mnist", str(tmp_path))
  message = str(info.value)
  assert "'mnist' is not prepared in " + str(tmp_path) in message
  assert f"tfds build mnist --data_dir={tmp_path}" in message
  assert "--tfds_download" in message
  assert isinstance(info.value, ValueError)


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match=r"dataset must be 'digits', "
                     r"'image_folder' or the name of a TFDS builder.*"
                     r"'no_such_dataset_xyz'"):
    sources.get_source("no_such_dataset_xyz", str(tmp_path))
  with pytest.raises(ValueError, match=r"Did you mean \[.*'cifar10'"):
    sources.get_source("cifar01", str(tmp_path))
  with pytest.raises(ValueError, match="dataset must be a non-empty string"):
    sources.get_source("", None)
