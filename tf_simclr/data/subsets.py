"""Label subsets: which labelled examples a semi-supervised run may use.

`class_balanced_subset` is the paper's deterministic 1 % / 10 % choice;
`select_labelled_examples` applies it (or a list of example ids read from a
file) to a `DataSource`, and `labelled_subset_source` wraps the source so the
ordinary fine-tuning pipeline only reads the selected examples::

  subset = labelled_subset_source(source, "train", label_fraction=0.01)
  pipelines.build_finetune_dataset(subset, "train", ...)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_simclr.data import sources

# How many unknown ids a subset-file error lists before summarising.
_MAX_LISTED_IDS = 10


def _stable_rank_key(example_id: str, seed: int) -> bytes:
  # A hash of (seed, id) orders examples identically on every machine and
  # Python version, independent of the order the source yields them in.
  return hashlib.sha256(f"{seed}:{example_id}".encode("utf-8")).digest()


def class_quotas(class_counts: Sequence[int], fraction: float) -> np.ndarray:
  """Examples to keep per class so that `fraction` of the split is kept.

  The total is round(fraction x split size), as the paper's ImageNet 1 % and
  10 % subsets count it, spread over the classes in proportion to their size.
  Rounding each class on its own instead keeps 10 of the 1,438 digits (one per
  class, 0.7 %) for 1 %; this keeps 14.

  Args:
    class_counts: examples of each class in the split (all >= 1).
    fraction: share of the split to keep, in (0, 1].

  Returns:
    int64 array aligned with `class_counts`: each class gets the floor of
    its share (at least 1, at most its count); the examples still missing to
    round(fraction * total) go one each to the classes with the largest
    remainders, ties to the lower class index. The sum exceeds that total
    only where the one-per-class minimum forces it.

  Raises:
    ValueError: if `fraction` is outside (0, 1] or a count is below 1.
  """
  if isinstance(fraction, bool) or not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
  counts = np.asarray(class_counts)
  if counts.ndim != 1 or not len(counts):
    raise ValueError(
        f"class_counts must be a non-empty list of counts, got {class_counts!r}")
  for count in counts.tolist():
    if isinstance(count, bool) or count < 1:
      raise ValueError(
          f"every class count must be an integer >= 1, got {count!r}")
  counts = counts.astype(np.int64)
  total = max(len(counts), int(round(fraction * counts.sum())))
  exact = fraction * counts
  quotas = np.clip(np.floor(exact).astype(np.int64), 1, counts)
  # Largest remainder first; a stable sort keeps lower class indices first.
  order = np.argsort(-(exact - np.floor(exact)), kind="stable")
  for k in order:
    if quotas.sum() >= total:
      break
    if quotas[k] < counts[k]:
      quotas[k] += 1
  return quotas


def class_balanced_subset(labels: Sequence[int],
                          fraction: float,
                          seed: int = 0,
                          example_ids: Sequence[str] | None = None
                          ) -> np.ndarray:
  """Indices of a class-balanced subset holding `fraction` of the examples.

  Each class keeps its `class_quotas` share (round(fraction * split size) in
  all, at least one per class), chosen by a seeded hash of the example id (the index when `example_ids` is None), so the
  same images are picked on every run and every machine.

  Args:
    labels: integer label of every example of the split.
    fraction: share of each class to keep, in (0, 1].
    seed: selects a different but equally deterministic subset.
    example_ids: stable per-example ids (file names, tfds ids).

  Returns:
    Sorted int64 indices into `labels`.

  Raises:
    ValueError: if `fraction` is outside (0, 1] or the ids don't match labels.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  labels = np.asarray(labels)
  if example_ids is None:
    example_ids = [str(i) for i in range(len(labels))]
  if len(example_ids) != len(labels):
    raise ValueError(
        f"example_ids has {len(example_ids)} entries but labels has "
        f"{len(labels)}")
  chosen = []
  classes, counts = np.unique(labels, return_counts=True)
  for label, keep in zip(classes, class_quotas(counts, fraction)):
    members = np.flatnonzero(labels == label)
    ranked = sorted(members,
                    key=lambda i: _stable_rank_key(str(example_ids[i]), seed))
    chosen.extend(ranked[:keep])
  return np.sort(np.asarray(chosen, dtype=np.int64))


def per_class_counts(labels: Sequence[int], indices: np.ndarray) -> dict:
  """{label: count} of the subset, for logging."""
  values, counts = np.unique(np.asarray(labels)[indices], return_counts=True)
  return {int(v): int(c) for v, c in zip(values, counts)}


@dataclasses.dataclass(frozen=True)
class LabelSubset:
  """The labelled examples a semi-supervised run may use.

  Attributes:
    ids: the kept example ids (`DataSource` "id" values), in split order.
    labels: their int32 labels.
    per_class_counts: {label: kept examples}, every class of the source.
    num_split_examples: examples of the whole split.
  """
  ids: tuple[str, ...]
  labels: np.ndarray
  per_class_counts: dict[int, int]
  num_split_examples: int


def _read_subset_file(path: str) -> list[str]:
  # One id or file name per line; blank lines and '#' comments are skipped.
  with tf.io.gfile.GFile(path, "r") as f:
    lines = [line.split("#", 1)[0].strip() for line in f]
  return list(dict.fromkeys(line for line in lines if line))


def _resolve_subset_entries(entries: Sequence[str], ids: Sequence[str],
                            path: str) -> np.ndarray:
  """Indices into `ids` named by the subset file's entries.

  An entry is an exact id, or else a file name matching exactly one id's last
  path component (image folders use 'split/class/file' ids; subset files such
  as the ImageNet 1 % list name bare files).
  """
  position = {example_id: i for i, example_id in enumerate(ids)}
  by_name = collections.defaultdict(list)
  for i, example_id in enumerate(ids):
    by_name[os.path.basename(example_id)].append(i)
  chosen, unknown, ambiguous = [], [], []
  for entry in entries:
    if entry in position:
      chosen.append(position[entry])
    elif len(by_name.get(entry, ())) == 1:
      chosen.append(by_name[entry][0])
    elif entry in by_name:
      ambiguous.append(entry)
    else:
      unknown.append(entry)
  if unknown:
    shown = ", ".join(repr(u) for u in unknown[:_MAX_LISTED_IDS])
    more = (f" and {len(unknown) - _MAX_LISTED_IDS} more"
            if len(unknown) > _MAX_LISTED_IDS else "")
    raise ValueError(
        f"label_subset_file {path!r} names {len(unknown)} example(s) that are "
        f"not in the split: {shown}{more} (expected ids such as "
        f"{ids[0]!r} or their file names)")
  if ambiguous:
    raise ValueError(
        f"label_subset_file {path!r} names file(s) matching several "
        f"examples, e.g. {ambiguous[0]!r}; list full ids instead")
  return np.unique(np.asarray(chosen, np.int64))


def select_labelled_examples(source: sources.DataSource,
                             split: str,
                             label_fraction: Optional[float] = None,
                             label_subset_file: Optional[str] = None,
                             seed: int = 0,
                             print_fn: Callable[[str], None] = print
                             ) -> LabelSubset:
  """Picks the labelled examples of `split` (exactly one selection rule).

  Args:
    source: the data source.
    split: the training split.
    label_fraction: keep this share of every class, in (0, 1]; the choice is
      class-balanced and deterministic for a given `seed`
      (`class_balanced_subset` over the source's example ids).
    label_subset_file: a text file listing the examples to keep, one per
      line: an example id of the source, or a file name when it identifies
      exactly one example. Blank lines and '#' comments are ignored.
    seed: selects another, equally deterministic, fraction subset.
    print_fn: receives a line with the subset size and per-class counts.

  Returns:
    The `LabelSubset`.

  Raises:
    ValueError: unless exactly one of `label_fraction` / `label_subset_file`
      is given, for a fraction outside (0, 1], or when the file names unknown
      or ambiguous examples or none at all.
  """
  if (label_fraction is None) == (label_subset_file is None):
    raise ValueError(
        "exactly one of label_fraction and label_subset_file must be given, "
        f"got label_fraction={label_fraction!r}, "
        f"label_subset_file={label_subset_file!r}")
  ids, labels = source.example_index(split)
  if not ids:
    raise ValueError(f"split {split!r} of {source.name!r} has no examples")
  if label_fraction is not None:
    if isinstance(label_fraction, bool) or not isinstance(
        label_fraction, (int, float)) or not 0.0 < label_fraction <= 1.0:
      raise ValueError(
          f"label_fraction must be in (0, 1], got {label_fraction!r}")
    indices = class_balanced_subset(labels, float(label_fraction),
                                            seed=seed, example_ids=ids)
    rule = f"label_fraction={label_fraction:g}, seed={seed}"
  else:
    if not tf.io.gfile.exists(label_subset_file):
      raise ValueError(
          f"label_subset_file {label_subset_file!r} does not exist")
    entries = _read_subset_file(label_subset_file)
    if not entries:
      raise ValueError(
          f"label_subset_file {label_subset_file!r} lists no examples")
    indices = _resolve_subset_entries(entries, ids, label_subset_file)
    rule = f"label_subset_file={label_subset_file}"
  counts = {label: 0 for label in range(source.num_classes)}
  counts.update(per_class_counts(labels, indices))
  subset = LabelSubset(
      ids=tuple(ids[i] for i in indices),
      labels=np.asarray(labels)[indices].astype(np.int32),
      per_class_counts=counts,
      num_split_examples=len(ids))
  names = source.class_names
  shown = ", ".join(
      f"{names[c] if c < len(names) else c}: {n}" for c, n in counts.items())
  print_fn(f"label subset ({rule}): {len(subset.ids)} of {len(ids)} "
           f"{split!r} examples; per class {{{shown}}}")
  missing = [c for c, n in counts.items() if n == 0]
  if missing:
    print_fn(f"warning: label subset has no examples of class(es) {missing}")
  return subset


class SubsetSource(sources.DataSource):
  """A `DataSource` whose `split` only yields the examples with given ids.

  Other splits pass through unchanged, so evaluation still sees the whole
  eval split. The filter runs on the wrapped source's records, before
  decoding (after its sharding, so input pipelines may get unequal shares of
  the subset).

  Args:
    source: the wrapped source.
    split: the split to restrict.
    ids: example ids to keep; every one must exist in `split`.
  """

  def __init__(self, source: sources.DataSource, split: str,
               ids: Sequence[str]):
    if isinstance(ids, str):
      raise ValueError(f"ids must be a sequence of ids, got the string {ids!r}")
    all_ids, all_labels = source.example_index(split)
    wanted = set(ids)
    if not wanted:
      raise ValueError(f"ids must not be empty for split {split!r}")
    unknown = wanted - set(all_ids)
    if unknown:
      raise ValueError(
          f"ids holds {len(unknown)} id(s) not in split {split!r} of "
          f"{source.name!r}, e.g. {sorted(unknown)[0]!r}")
    self.source = source
    self.split = split
    self.ids = tuple(dict.fromkeys(ids))
    self.name = source.name
    self.num_classes = source.num_classes
    self.class_names = source.class_names
    self.split_names = source.split_names
    keep = [i for i, example_id in enumerate(all_ids) if example_id in wanted]
    self._index = ([all_ids[i] for i in keep],
                   np.asarray(all_labels)[keep].astype(np.int32))

  def num_examples(self, split: str) -> int:
    if split == self.split:
      return len(self.ids)
    return self.source.num_examples(split)

  def skipped_count(self, split: str) -> int:
    return self.source.skipped_count(split)

  def example_index(self, split: str) -> tuple[list[str], np.ndarray]:
    if split == self.split:
      return list(self._index[0]), self._index[1].copy()
    return self.source.example_index(split)

  @property
  def decodes_every_record(self) -> bool:
    return self.source.decodes_every_record

  def decode_records(self, records: tf.data.Dataset) -> tf.data.Dataset:
    return self.source.decode_records(records)

  def make_records(self,
                   split: str,
                   *,
                   shuffle_files: bool = False,
                   input_context: Optional[tf.distribute.InputContext] = None,
                   seed: Optional[int] = None) -> tf.data.Dataset:
    # Filtering records keeps the other examples from ever being decoded.
    dataset = self.source.make_records(split, shuffle_files=shuffle_files,
                                       input_context=input_context, seed=seed)
    if split != self.split:
      return dataset
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.ids, tf.string),
            tf.ones([len(self.ids)], tf.int32)),
        default_value=0)
    return dataset.filter(lambda record: table.lookup(record["id"]) > 0)


def labelled_subset_source(source: sources.DataSource, split: str,
                           **selection) -> SubsetSource:
  """`source` restricted to the labelled examples of `split`.

  `selection` holds the keyword arguments of `select_labelled_examples`
  (label_fraction or label_subset_file, seed, print_fn). Pass the result to
  `pipelines.build_finetune_dataset` (or `make_dataset_fn`) in place of
  `source`; its `num_examples(split)` is the subset size, so epochs (and the
  schedule) count labelled examples, as with the TFDS 1 %/10 % subsets.
  """
  subset = select_labelled_examples(source, split, **selection)
  return SubsetSource(source, split, subset.ids)
