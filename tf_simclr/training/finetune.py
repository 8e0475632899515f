"""Fine-tuning and supervised training (SPEC §7), and label subsets.

`FinetuneTrainer` serves two stages with one step:

* `train_mode='finetune'`: the model comes from
  `build_model(..., 'finetune', frozen_through_block=fine_tune_after_block)`
  and is warm-started with `warm_start_finetune` from a tf_simclr pretraining
  checkpoint or an original-code SavedModel.
* `train_mode='supervised'`: the same network trained from scratch.

Semi-supervised fine-tuning on a share of the labels uses
`labelled_subset_source`, which wraps a `DataSource` so that the ordinary
fine-tuning pipeline only reads the selected examples::

  subset = labelled_subset_source(source, "train", label_fraction=0.01)
  pipelines.build_finetune_dataset(subset, "train", ...)
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_simclr import losses
from tf_simclr import paths
from tf_simclr.data import sources
from tf_simclr.data import subsets
from tf_simclr.models import simclr_model
from tf_simclr.training import checkpoints
from tf_simclr.training import common
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision
from tf_simclr.training.pretrain import SUPERVISED_ACC
from tf_simclr.training.pretrain import SUPERVISED_LOSS
from tf_simclr.training.pretrain import TOTAL_LOSS
from tf_simclr.training.pretrain import WEIGHT_DECAY

# How many unknown ids a subset-file error lists before summarising.
_MAX_LISTED_IDS = 10
# Checkpoint key of the supervised head's variables in a tf_simclr checkpoint
# written as tf.train.Checkpoint(model=...): attribute names of SimCLRModel
# (`supervised_head`) and SupervisedHead (`dense`).
_HEAD_CHECKPOINT_KEY = (
    "model/supervised_head/dense/{}/.ATTRIBUTES/VARIABLE_VALUE")


class FinetuneTrainer(common.StepTrainer):
  """One supervised step per replica on {"image", "label"} batches.

  The loss is the softmax cross-entropy of the supervised head plus the
  optimizer-dependent weight-decay term (SPEC §3.3, §4.2). Frozen backbone
  parts (`frozen_through_block`) hold no trainable variables, so they get no
  gradient and no decay, and their batch norms run in inference mode.

  Args:
    strategy, model, optimizer, train_dataset, optimizer_name, weight_decay,
    jit_compile: see `common.StepTrainer`. The model is a built `SimCLRModel`
      with a supervised head (from `build_model(model_config, head_config,
      'finetune' or 'supervised', frozen_through_block=...)`); the dataset
      distributes {"image": float32 [b, S, S, 3], "label": int32 [b]}
      per-replica batches (`build_finetune_dataset`, possibly over a
      `labelled_subset_source`).
  """

  def __init__(self, strategy, model, *args, **kwargs):
    if getattr(model, "supervised_head", None) is None:
      raise ValueError(
          f"model must be a SimCLRModel with a supervised head, got {model!r}")
    super().__init__(strategy, model, *args, **kwargs)

  def metric_names(self):
    return (TOTAL_LOSS, SUPERVISED_LOSS, SUPERVISED_ACC, WEIGHT_DECAY,
            common.GRADIENT_NORM)

  def _loss_and_gradients(self, images, labels):
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)[simclr_model.LOGITS_SUP]
      supervised = losses.supervised_loss(labels, logits)
      decay = optimizer_lib.weight_decay_loss(variables, self.optimizer_name,
                                              self.weight_decay)
      total = supervised + decay
      # Gradients are summed over replicas, so scale for a mean.
      scaled = precision.scale_loss(
          self.optimizer, total / self.strategy.num_replicas_in_sync)
    gradients = precision.unscale_gradients(
        self.optimizer, tape.gradient(scaled, variables))
    stats = {
        TOTAL_LOSS: total,
        SUPERVISED_LOSS: supervised,
        SUPERVISED_ACC: losses.top_k_accuracy(labels, logits, 1),
        WEIGHT_DECAY: decay,
    }
    return gradients, stats

  def replica_step(self, batch) -> dict[str, tf.Tensor]:
    """One replica's whole step (what `strategy.run` runs); returns its stats."""
    gradients, stats = self._forward_backward(batch["image"], batch["label"])
    return self._apply(gradients, stats)


# ----------------------------------------------------------------------------
# Warm start


def _head_matches(model: simclr_model.SimCLRModel,
                  shapes: dict[str, list[int]]) -> bool:
  dense = model.supervised_head.dense
  return all(
      shapes.get(_HEAD_CHECKPOINT_KEY.format(name)) ==
      getattr(dense, name).shape.as_list()
      for name in ("kernel", "bias"))


def _reference_head_kernel_shape(path: str) -> Optional[list[int]]:
  """Shape of an original-code model's supervised-head kernel, if any."""
  from tf_simclr.export import reference_import  # Pulls in the proto parser.
  prefix = reference_import.checkpoint_prefix(path)
  shapes = paths.checkpoint_reader(prefix).get_variable_to_shape_map()
  for p, k in reference_import.read_reference_object_graph(prefix).items():
    if p.startswith("model/supervised_head/") and p.endswith("/kernel"):
      return [int(d) for d in shapes[k]]
  return None


def warm_start_finetune(model: simclr_model.SimCLRModel,
                        path: str,
                        zero_init_logits_layer: bool = False,
                        print_fn: Callable[[str], None] = print) -> str:
  """Loads pretrained weights into a fine-tuning model (SPEC §7.2).

  Backbone and projection head are always loaded (never optimizer state or
  step). The supervised head is loaded too when the source has one of the
  same shape (a pretraining run with linear eval on the same classes, as the
  reference does); otherwise it keeps its initial values. With
  `zero_init_logits_layer` the head's kernel and bias are zeroed after
  loading, which the reference intended but never did (quirk Q4).

  Args:
    model: a built `SimCLRModel` with a supervised head.
    path: a tf_simclr checkpoint prefix or directory, or an original-code
      SavedModel directory.
    zero_init_logits_layer: zero the supervised head after loading.
    print_fn: receives one line describing what was loaded.

  Returns:
    The checkpoint prefix or SavedModel directory that was loaded.

  Raises:
    ValueError: if nothing restorable is at `path` or its backbone or
      projection head does not match the model's architecture.
  """
  if getattr(model, "supervised_head", None) is None:
    raise ValueError(
        f"model must be a SimCLRModel with a supervised head, got {model!r}")
  if not model.built:
    raise ValueError("model must be built (called once) before warm start")
  if checkpoints.is_saved_model_dir(path):
    from tf_simclr.export import reference_import  # Pulls in the proto parser.
    with_head = (_reference_head_kernel_shape(path) ==
                 model.supervised_head.dense.kernel.shape.as_list())
    reference_import.load_reference_weights_into(
        model, path, include_supervised_head=with_head)
    source = path
    what = "original-code SavedModel"
  else:
    source = checkpoints.resolve_checkpoint_prefix(path)
    shapes = paths.checkpoint_reader(source).get_variable_to_shape_map()
    with_head = _head_matches(model, shapes)
    if with_head:
      targets = model
    else:
      # A stand-in with the same attribute names matches the same checkpoint
      # keys but leaves the supervised head out of the restore.
      targets = tf.train.Checkpoint(backbone=model.backbone,
                                    projection_head=model.projection_head)
    status = tf.train.Checkpoint(model=targets).restore(source)
    status.expect_partial()
    try:
      status.assert_existing_objects_matched()
    except AssertionError as e:
      raise ValueError(
          f"checkpoint {source!r} does not match this model's architecture: "
          f"{str(e).splitlines()[0]}") from None
    what = "tf_simclr checkpoint"
  if zero_init_logits_layer:
    model.supervised_head.zero_weights()
  head = ("supervised head loaded" if with_head
          else "supervised head not in the source (or another shape), "
          "left at its initial values")
  if zero_init_logits_layer:
    head += "; supervised head zeroed"
  print_fn(f"warm start: {what} {source} ({head})")
  return source


# ----------------------------------------------------------------------------
# Label subsets


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
      (`subsets.class_balanced_subset` over the source's example ids).
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
    indices = subsets.class_balanced_subset(labels, float(label_fraction),
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
  counts.update(subsets.per_class_counts(labels, indices))
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


def labelled_subset_source(source: sources.DataSource,
                           split: str,
                           label_fraction: Optional[float] = None,
                           label_subset_file: Optional[str] = None,
                           seed: int = 0,
                           print_fn: Callable[[str], None] = print
                           ) -> SubsetSource:
  """`source` restricted to the labelled examples of `split`.

  See `select_labelled_examples` for the arguments. Pass the result to
  `pipelines.build_finetune_dataset` (or `make_dataset_fn`) in place of
  `source`; its `num_examples(split)` is the subset size, so epochs (and the
  schedule) count labelled examples, as with the TFDS 1 %/10 % subsets.
  """
  subset = select_labelled_examples(source, split, label_fraction,
                                    label_subset_file, seed, print_fn)
  return SubsetSource(source, split, subset.ids)
