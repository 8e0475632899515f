"""Data sources: one interface over TFDS datasets, image folders and `digits`.

`get_source(dataset, data_dir)` returns a `DataSource` whose `make_dataset`
yields single, undecorated examples

  {"image": uint8 [H, W, 3], "label": int32 [], "id": string []}

Images are always RGB (grayscale sources are replicated to three channels, so
colour augmentation and the 3-channel model input need no special case) and
may differ in size from example to example (image folders); the per-stage
pipelines crop and resize them. `"id"` is a stable per-example key, identical
on every run and machine, used to select label subsets:

* `digits`: the example's index in scikit-learn's `load_digits()` ("0".."1796").
* `image_folder`: the file path relative to `data_dir`, with forward slashes
  ("train/cat/0001.jpg").
* TFDS: the `tfds_id` ("cifar10-train.tfrecord-00000-of-00016__17").

Three kinds of dataset are accepted:

* `digits` (the default): scikit-learn's 1,797 handwritten 8x8 digits, embedded
  in the package, so everything runs offline. Exposed at their native 8x8
  resolution (values 0..16 scaled to 0..255 with round-half-to-even, grey
  replicated to RGB); the pipelines resize. Splits `train` (1,438) and `test`
  (359): per class, the 20 % of examples whose ids hash lowest go to `test`.
* `image_folder`: `data_dir/<split>/<class>/<image>` with JPEG or PNG files
  (extensions case-insensitive, any size, grey or colour). Class names are the
  sorted sub-folders of the `train` split (of all splits when there is none) and
  are shared by every split. Files whose first bytes are not a JPEG or PNG
  signature are reported when a split is first listed; files that pass that
  check but fail to decode are reported by path when the pipeline reaches them.
  With `skip_corrupt_images=True` both kinds are skipped instead.
* any TFDS builder name (`cifar10`, `imagenet2012`, `imagenet2012_subset/1pct`,
  ...), read from `data_dir` (the TFDS default when None). The dataset must be
  prepared there already unless `download=True`.
"""

from __future__ import annotations

import abc
import concurrent.futures
import difflib
import hashlib
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf

DIGITS = "digits"
IMAGE_FOLDER = "image_folder"

# Share of each digit class that goes to the `test` split.
DIGITS_TEST_FRACTION = 0.2

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Header checks are I/O bound (one small read per file); threads hide the
# latency of network file systems.
_HEADER_CHECK_THREADS = 16
# How many offending paths an error message lists before summarising.
_MAX_LISTED_PATHS = 10

# TFDS interleave settings of the reference input pipeline.
_TFDS_INTERLEAVE_CYCLE_LENGTH = 32
_TFDS_INTERLEAVE_BLOCK_LENGTH = 1

_logger = logging.getLogger(__name__)


class DatasetNotPreparedError(ValueError):
  """A TFDS dataset is not prepared in `data_dir` (and was not downloaded)."""


def _check_split_name(split: Any) -> str:
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string, got {split!r}")
  return split


def _shard_bounds(input_context: Optional[tf.distribute.InputContext]
                  ) -> tuple[int, int]:
  """(pipeline id, number of pipelines) of an optional input context."""
  if input_context is None:
    return 0, 1
  return input_context.input_pipeline_id, input_context.num_input_pipelines


class DataSource(abc.ABC):
  """A labelled image dataset with named splits.

  Attributes:
    name: the `dataset` value the source was built from.
    num_classes: number of classes; labels are in [0, num_classes).
    class_names: class names indexed by label.
    split_names: the splits `make_dataset` accepts.
  """

  name: str
  num_classes: int
  class_names: tuple[str, ...]
  split_names: tuple[str, ...]

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Number of examples `make_dataset(split)` yields over all shards."""

  @abc.abstractmethod
  def make_records(self,
                   split: str,
                   *,
                   shuffle_files: bool = False,
                   input_context: Optional[tf.distribute.InputContext] = None,
                   seed: Optional[int] = None) -> tf.data.Dataset:
    """`make_dataset`'s pass before decoding: one cheap record per example.

    Records are dicts with at least the examples' "label" and "id" (a file
    path, an index or an encoded image stands for the image);
    `decode_records` turns them into examples. Training pipelines shuffle,
    repeat and skip records, so a resumed run never decodes the examples it
    skips. Arguments as for `make_dataset`.
    """

  def decode_records(self, records: tf.data.Dataset) -> tf.data.Dataset:
    """The examples of `make_records`' records, in order.

    One example per record, unless `decodes_every_record` is False.
    """
    return records

  @property
  def decodes_every_record(self) -> bool:
    """False when `decode_records` may drop records (skipped corrupt files)."""
    return True

  def make_dataset(self,
                   split: str,
                   *,
                   shuffle_files: bool = False,
                   input_context: Optional[tf.distribute.InputContext] = None,
                   seed: Optional[int] = None) -> tf.data.Dataset:
    """One pass over a split as {"image", "label", "id"} examples.

    Args:
      split: split name.
      shuffle_files: read files (examples, for in-memory sources) in a seeded
        random order that changes on every iteration of the dataset.
      input_context: when given, only the shard of input pipeline
        `input_pipeline_id` out of `num_input_pipelines` is read; shards are
        disjoint and together cover the split.
      seed: seed of the file shuffle; None for an unseeded shuffle.

    Returns:
      A finite `tf.data.Dataset`.
    """
    return self.decode_records(self.make_records(
        split, shuffle_files=shuffle_files, input_context=input_context,
        seed=seed))

  def skipped_count(self, split: str) -> int:
    """Corrupt files left out of `split` at listing time (image folders)."""
    del split
    return 0

  def undecodable_files(self) -> list[str]:
    """Files skipped so far because they failed to decode (image folders)."""
    return []

  @abc.abstractmethod
  def example_index(self, split: str) -> tuple[list[str], np.ndarray]:
    """(ids, int32 labels) of every example of `split`, without decoding images.

    Lets later stages pick label subsets by id; the order is stable.
    """

  def _check_split(self, split: Any) -> str:
    split = _check_split_name(split)
    if split not in self.split_names:
      raise ValueError(
          f"split must be one of {list(self.split_names)} for dataset "
          f"{self.name!r}, got {split!r}")
    return split


def _shuffled(dataset: tf.data.Dataset, size: int, shuffle: bool,
              seed: Optional[int]) -> tf.data.Dataset:
  # Shuffles cheap elements (paths or indices) before any decoding; a full
  # buffer makes it a uniform permutation, re-drawn on every iteration.
  if not shuffle or size <= 1:
    return dataset
  return dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)


def _stable_hash(text: str) -> bytes:
  return hashlib.sha256(text.encode("utf-8")).digest()


# ----------------------------------------------------------------------------
# digits


class DigitsSource(DataSource):
  """scikit-learn's 8x8 handwritten digits, split deterministically.

  Args:
    test_fraction: share of each class assigned to the `test` split.
  """

  def __init__(self, test_fraction: float = DIGITS_TEST_FRACTION):
    if not 0.0 < test_fraction < 1.0:
      raise ValueError(
          f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn import datasets  # Deferred: only this source needs sklearn.
    digits = datasets.load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    self.test_fraction = test_fraction
    self.name = DIGITS
    self.num_classes = 10
    self.class_names = tuple(str(c) for c in range(10))
    self.split_names = ("test", "train")
    self._images = np.repeat(grey[..., np.newaxis], 3, axis=-1)
    self._labels = digits.target.astype(np.int32)
    self._indices = self._split_indices(self._labels, test_fraction)

  @staticmethod
  def _split_indices(labels: np.ndarray,
                     test_fraction: float) -> dict[str, np.ndarray]:
    # Ranking by a hash of the id rather than a seeded permutation keeps the
    # split identical across NumPy versions.
    test = []
    for label in np.unique(labels):
      members = np.flatnonzero(labels == label)
      ranked = sorted(members, key=lambda i: _stable_hash(f"digits:{i}"))
      test.extend(ranked[:int(round(test_fraction * len(members)))])
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}

  def num_examples(self, split: str) -> int:
    return len(self._indices[self._check_split(split)])

  def example_index(self, split: str) -> tuple[list[str], np.ndarray]:
    indices = self._indices[self._check_split(split)]
    return [str(i) for i in indices], self._labels[indices]

  def make_records(self,
                   split: str,
                   *,
                   shuffle_files: bool = False,
                   input_context: Optional[tf.distribute.InputContext] = None,
                   seed: Optional[int] = None) -> tf.data.Dataset:
    indices = self._indices[self._check_split(split)]
    # No files to shard: examples are dealt round-robin to the pipelines.
    pipeline_id, num_pipelines = _shard_bounds(input_context)
    indices = indices[pipeline_id::num_pipelines]
    if not len(indices):
      raise ValueError(
          f"input pipeline {pipeline_id} of {num_pipelines} gets no examples "
          f"of split {split!r} ({self.num_examples(split)} examples)")
    dataset = tf.data.Dataset.from_tensor_slices({
        "index": indices,
        "label": self._labels[indices],
        "id": np.asarray([str(i) for i in indices]),
    })
    return _shuffled(dataset, len(indices), shuffle_files, seed)

  def decode_records(self, records: tf.data.Dataset) -> tf.data.Dataset:
    images = tf.constant(self._images)
    return records.map(
        lambda r: {"image": tf.gather(images, r["index"]), "label": r["label"],
                   "id": r["id"]},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------------------
# image_folder


def _visible_subdirs(path: str) -> list[str]:
  names = []
  for name in tf.io.gfile.listdir(path):
    # Object stores mark sub-directories with a trailing slash; a local
    # listing needs one stat per entry (splits and classes only).
    if name.endswith("/") or tf.io.gfile.isdir(os.path.join(path, name)):
      name = name.rstrip("/")
      if not name.startswith("."):
        names.append(name)
  return sorted(names)


def _image_files(path: str) -> list[str]:
  """Names in `path` with an image extension, sorted, without a stat each."""
  # A directory with an image extension fails the signature check later.
  return sorted(name for name in tf.io.gfile.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS))


def _has_image_signature(path: str) -> bool:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      head = f.read(len(_PNG_MAGIC))
  except (OSError, tf.errors.OpError):
    return False
  return head.startswith(_JPEG_MAGIC) or head.startswith(_PNG_MAGIC)


def _format_paths(paths: Sequence[str]) -> str:
  shown = ", ".join(paths[:_MAX_LISTED_PATHS])
  if len(paths) > _MAX_LISTED_PATHS:
    shown += f", ... ({len(paths) - _MAX_LISTED_PATHS} more)"
  return shown


class ImageFolderSource(DataSource):
  """Images in `root/<split>/<class>/`, labelled by sorted class folder names.

  Listing a split (on first use) checks the signature of every file, costing
  one small read per file rather than a decode. Files that pass the check but
  fail to decode are detected inside the `tf.data` graph: the pipeline either
  stops with an error naming the file or, with `skip_corrupt_images`, drops the
  example and prints its path.

  Args:
    root: folder holding one sub-folder per split.
    skip_corrupt_images: skip unreadable files instead of raising.
  """

  def __init__(self, root: str, skip_corrupt_images: bool = False):
    if not root:
      raise ValueError(
          f"data_dir must name the image folder root for dataset "
          f"{IMAGE_FOLDER!r}, got {root!r}")
    root = os.fspath(root)
    if not tf.io.gfile.isdir(root):
      raise ValueError(
          f"data_dir {root!r} is not an existing directory; dataset "
          f"{IMAGE_FOLDER!r} expects data_dir/<split>/<class>/<image files>")
    splits = _visible_subdirs(root)
    if not splits:
      raise ValueError(
          f"data_dir {root!r} has no split folders; dataset {IMAGE_FOLDER!r} "
          "expects data_dir/<split>/<class>/<image files>, e.g. train/ and "
          "test/")
    self.root = root
    self.skip_corrupt_images = bool(skip_corrupt_images)
    self.name = IMAGE_FOLDER
    self.split_names = tuple(splits)
    class_splits = ["train"] if "train" in splits else splits
    classes = sorted({c for s in class_splits
                      for c in _visible_subdirs(os.path.join(root, s))})
    if not classes:
      raise ValueError(
          f"no class folders found in {os.path.join(root, class_splits[0])!r}; "
          f"each split folder of {IMAGE_FOLDER!r} must hold one folder per "
          "class")
    self.class_names = tuple(classes)
    self.num_classes = len(classes)
    self._class_ids = {c: i for i, c in enumerate(classes)}
    self._listings: dict[str, tuple[list[str], np.ndarray]] = {}
    self._skipped: dict[str, list[str]] = {}
    self._undecodable: set[str] = set()

  def _listing(self, split: str) -> tuple[list[str], np.ndarray]:
    """Sorted relative paths and labels of the readable files of `split`."""
    split = self._check_split(split)
    if split in self._listings:
      return self._listings[split]
    split_dir = os.path.join(self.root, split)
    class_dirs = _visible_subdirs(split_dir)
    unknown = sorted(set(class_dirs) - set(self._class_ids))
    if unknown:
      raise ValueError(
          f"split {split!r} of {self.root!r} has class folders {unknown} that "
          f"the train split lacks; known classes: {list(self.class_names)}")
    relpaths, labels = [], []
    for class_name in class_dirs:
      names = _image_files(os.path.join(split_dir, class_name))
      relpaths.extend(f"{split}/{class_name}/{n}" for n in names)
      labels.extend([self._class_ids[class_name]] * len(names))
    if not relpaths:
      raise ValueError(
          f"split folder {split_dir!r} holds no {'/'.join(IMAGE_EXTENSIONS)} "
          "files in its class folders")
    with concurrent.futures.ThreadPoolExecutor(_HEADER_CHECK_THREADS) as pool:
      readable = list(pool.map(
          _has_image_signature, (os.path.join(self.root, p) for p in relpaths)))
    corrupt = [p for p, ok in zip(relpaths, readable) if not ok]
    if corrupt and not self.skip_corrupt_images:
      raise ValueError(
          f"{len(corrupt)} file(s) in {self.root!r} are not JPEG or PNG "
          f"images: {_format_paths(corrupt)}; remove them or set "
          "skip_corrupt_images")
    if corrupt:
      _logger.warning("Skipping %d corrupt image file(s) in %s: %s",
                      len(corrupt), self.root, _format_paths(corrupt))
    relpaths = [p for p, ok in zip(relpaths, readable) if ok]
    labels = np.asarray([l for l, ok in zip(labels, readable) if ok], np.int32)
    if not relpaths:
      raise ValueError(f"split folder {split_dir!r} holds no readable images")
    self._skipped[split] = corrupt
    self._listings[split] = (relpaths, labels)
    return relpaths, labels

  def num_examples(self, split: str) -> int:
    return len(self._listing(split)[0])

  def skipped_count(self, split: str) -> int:
    self._listing(split)
    return len(self._skipped[split])

  def skipped_files(self, split: str) -> list[str]:
    """Relative paths of the files `skipped_count` counts."""
    self._listing(split)
    return list(self._skipped[split])

  def example_index(self, split: str) -> tuple[list[str], np.ndarray]:
    relpaths, labels = self._listing(split)
    return list(relpaths), labels.copy()

  @property
  def decodes_every_record(self) -> bool:
    return not self.skip_corrupt_images

  def make_records(self,
                   split: str,
                   *,
                   shuffle_files: bool = False,
                   input_context: Optional[tf.distribute.InputContext] = None,
                   seed: Optional[int] = None) -> tf.data.Dataset:
    relpaths, labels = self._listing(split)
    pipeline_id, num_pipelines = _shard_bounds(input_context)
    relpaths = relpaths[pipeline_id::num_pipelines]
    labels = labels[pipeline_id::num_pipelines]
    if not relpaths:
      raise ValueError(
          f"input pipeline {pipeline_id} of {num_pipelines} gets no files of "
          f"split {split!r} ({self.num_examples(split)} files)")
    files = tf.data.Dataset.from_tensor_slices({
        "path": [os.path.join(self.root, p) for p in relpaths],
        "label": labels,
        "id": relpaths,
    })
    return _shuffled(files, len(relpaths), shuffle_files, seed)

  def decode_records(self, records: tf.data.Dataset) -> tf.data.Dataset:
    # Each file becomes a sub-dataset of exactly one element: the decoded image,
    # or, when decoding fails, a fallback that either raises naming the file or
    # yields an empty marker image that is filtered out. The fallback is only
    # evaluated when the decode produced nothing.
    examples = records.interleave(
        self._load_or_report,
        cycle_length=tf.data.AUTOTUNE,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if self.skip_corrupt_images:
      examples = examples.filter(lambda ex: tf.size(ex["image"]) > 0)
    return examples

  def undecodable_files(self) -> list[str]:
    return sorted(self._undecodable)

  def _load_or_report(self, file: dict[str, tf.Tensor]) -> tf.data.Dataset:
    one = tf.data.Dataset.from_tensors(file)
    decoded = one.map(_decode_file).ignore_errors()
    report = self._skip_marker if self.skip_corrupt_images else _raise_corrupt
    return decoded.concatenate(one.map(report)).take(1)

  def _skip_marker(self, file: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    def remember(path):
      # Distinct files: every epoch meets the same corrupt file again.
      self._undecodable.add(path.numpy().decode("utf-8"))
      return True

    log = tf.print("WARNING: skipping corrupt image file", file["path"])
    noted = tf.py_function(remember, [file["path"]], tf.bool)
    with tf.control_dependencies([log, noted]):
      image = tf.zeros([0, 0, 3], tf.uint8)
    return {"image": image, "label": file["label"], "id": file["id"]}


def _decode_file(file: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  image = tf.io.decode_image(tf.io.read_file(file["path"]), channels=3,
                             expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  return {"image": image, "label": file["label"], "id": file["id"]}


def _raise_corrupt(file: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  check = tf.debugging.Assert(
      False, ["corrupt or truncated image file", file["path"],
              "(--skip_corrupt_images skips and counts such files)"])
  with tf.control_dependencies([check]):
    image = tf.zeros([0, 0, 3], tf.uint8)
  return {"image": image, "label": file["label"], "id": file["id"]}


# ----------------------------------------------------------------------------
# TFDS


class TfdsSource(DataSource):
  """A prepared TensorFlow Datasets builder.

  Args:
    builder: a prepared `tfds.core.DatasetBuilder`.
    name: the `dataset` value the builder was created from.
  """

  def __init__(self, builder: Any, name: str):
    info = builder.info
    if not info.supervised_keys:
      raise ValueError(
          f"TFDS dataset {name!r} defines no (image, label) supervised keys")
    image_key, label_key = info.supervised_keys[:2]
    label_feature = info.features[label_key]
    if not hasattr(label_feature, "num_classes"):
      raise ValueError(
          f"TFDS dataset {name!r} has a {type(label_feature).__name__} label, "
          "not a ClassLabel")
    self.builder = builder
    self.name = name
    self.num_classes = int(label_feature.num_classes)
    self.class_names = tuple(label_feature.names)
    self.split_names = tuple(sorted(info.splits.keys()))
    self._image_key = image_key
    self._label_key = label_key

  def _check_split(self, split: Any) -> str:
    split = _check_split_name(split)
    # TFDS also accepts slices such as "train[:10%]"; let it judge those.
    if split not in self.split_names and "[" not in split and "+" not in split:
      raise ValueError(
          f"split must be one of {list(self.split_names)} for dataset "
          f"{self.name!r}, got {split!r}")
    return split

  def num_examples(self, split: str) -> int:
    return int(self.builder.info.splits[self._check_split(split)].num_examples)

  def _pipeline_split(
      self, split: str,
      input_context: Optional[tf.distribute.InputContext]
  ) -> tuple[Any, Optional[tf.distribute.InputContext]]:
    """What one input pipeline reads: its share of the files, or of examples.

    TFDS deals whole files to the pipelines; a split with fewer files than
    pipelines is dealt by example ranges instead (`tfds.even_splits`, which
    reads only those ranges).
    """
    import tensorflow_datasets as tfds  # Deferred: slow import.
    pipeline_id, num_pipelines = _shard_bounds(input_context)
    files = len(self.builder.info.splits[split].file_instructions)
    if num_pipelines > 1 and files < num_pipelines:
      return tfds.even_splits(split, num_pipelines)[pipeline_id], None
    return split, input_context

  def make_records(self,
                   split: str,
                   *,
                   shuffle_files: bool = False,
                   input_context: Optional[tf.distribute.InputContext] = None,
                   seed: Optional[int] = None) -> tf.data.Dataset:
    import tensorflow_datasets as tfds  # Deferred: slow import.
    split, input_context = self._pipeline_split(self._check_split(split),
                                                input_context)
    read_config = tfds.ReadConfig(
        interleave_cycle_length=_TFDS_INTERLEAVE_CYCLE_LENGTH,
        interleave_block_length=_TFDS_INTERLEAVE_BLOCK_LENGTH,
        input_context=input_context,
        shuffle_seed=seed,
        add_tfds_id=True)
    # Images stay encoded until `decode_records`.
    dataset = self.builder.as_dataset(
        split=split, shuffle_files=shuffle_files, read_config=read_config,
        decoders={self._image_key: tfds.decode.SkipDecoding()})
    image_key, label_key = self._image_key, self._label_key
    return dataset.map(
        lambda f: {"image": f[image_key],
                   "label": tf.cast(f[label_key], tf.int32),
                   "id": f["tfds_id"]},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def decode_records(self, records: tf.data.Dataset) -> tf.data.Dataset:
    feature = self.builder.info.features[self._image_key]

    def decode(record):
      image = feature.decode_example(record["image"])
      if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
      return {"image": tf.ensure_shape(image, [None, None, 3]),
              "label": record["label"], "id": record["id"]}

    return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)

  def example_index(self, split: str) -> tuple[list[str], np.ndarray]:
    import tensorflow_datasets as tfds  # Deferred: slow import.
    dataset = self.builder.as_dataset(
        split=self._check_split(split), shuffle_files=False,
        read_config=tfds.ReadConfig(add_tfds_id=True),
        decoders={self._image_key: tfds.decode.SkipDecoding()})
    ids, labels = [], []
    for tfds_id, label in dataset.map(
        lambda f: (f["tfds_id"], f[self._label_key])).as_numpy_iterator():
      ids.append(tfds_id.decode("utf-8"))
      labels.append(label)
    return ids, np.asarray(labels, np.int32)


def _not_prepared_message(name: str, data_dir: Optional[str],
                          offer_download: bool = True) -> str:
  where = data_dir if data_dir else "the TFDS default data_dir"
  target = f"--data_dir={data_dir}" if data_dir else "--data_dir=<dir>"
  download = (", or let this run download and prepare it (--tfds_download; "
              "needs internet access)" if offer_download else "")
  return (
      f"TFDS dataset {name!r} is not prepared in {where}. Prepare it on a "
      f"machine with internet access (`tfds build {name} {target}`) and copy "
      "the prepared folder over, or point data_dir at an existing prepared "
      f"copy{download}.")


def _tfds_source(name: str, data_dir: Optional[str],
                 download: bool) -> TfdsSource:
  import tensorflow_datasets as tfds  # Deferred: slow import.
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(
        f"dataset must be {DIGITS!r}, {IMAGE_FOLDER!r} or the name of a TFDS "
        "builder (e.g. 'cifar10', 'imagenet2012', "
        f"'imagenet2012_subset/1pct'), got {name!r}.{hint}") from None
  if not builder.is_prepared():
    if not download:
      raise DatasetNotPreparedError(_not_prepared_message(name, data_dir))
    try:
      builder.download_and_prepare()
    except Exception as e:  # Any failure means the same thing to the user.
      raise DatasetNotPreparedError(
          f"Downloading TFDS dataset {name!r} failed ({type(e).__name__}: "
          f"{e}). " + _not_prepared_message(name, data_dir,
                                             offer_download=False)) from e
  return TfdsSource(builder, name)


# ----------------------------------------------------------------------------


def get_source(dataset: str,
               data_dir: Optional[str] = None,
               *,
               skip_corrupt_images: bool = False,
               download: bool = False) -> DataSource:
  """Builds the data source named by `--dataset` / `--data_dir`.

  Args:
    dataset: "digits", "image_folder" or a TFDS builder name (with an optional
      "/config" suffix).
    data_dir: image folder root for "image_folder"; TFDS data directory for TFDS
      names (None: the TFDS default); ignored by "digits".
    skip_corrupt_images: image folders only: skip unreadable files instead of
      raising.
    download: TFDS only: download and prepare the dataset when it is missing
      from `data_dir`.

  Returns:
    A `DataSource`.

  Raises:
    ValueError: for an unknown dataset name or an unusable data_dir
      (`DatasetNotPreparedError`, a ValueError, when a TFDS dataset is missing).
  """
  if not isinstance(dataset, str) or not dataset:
    raise ValueError(f"dataset must be a non-empty string, got {dataset!r}")
  if dataset == DIGITS:
    return DigitsSource()
  if dataset == IMAGE_FOLDER:
    return ImageFolderSource(data_dir, skip_corrupt_images=skip_corrupt_images)
  return _tfds_source(dataset, data_dir, download)
