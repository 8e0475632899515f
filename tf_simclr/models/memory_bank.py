"""MoCo-style memory of negatives for SimCLRv2 pretraining (issue 6).

Two building blocks:

* `NegativeQueue(size, dim)`: a FIFO ring buffer of L2-normalised keys whose
  valid rows are appended to NT-Xent as extra negatives
  (`losses.nt_xent_loss(..., extra_negatives=queue.negatives())`). Positives
  stay the two online views; the queue only ever adds negative columns.
* `MomentumEncoder(model)`: an exponential-moving-average (EMA) twin of the
  online backbone + projection head that produces the keys.

Both are `tf.Module`s, so a `tf.train.Checkpoint` that holds them saves and
restores the queue, its pointer and fill count, and the momentum weights:
resuming continues with exactly the queue of the interrupted run. Neither is
reachable from the online model, so exporting the online model never exports
the momentum encoder; export `momentum_encoder.model` explicitly if wanted.

Design choices
--------------
Keys: one key per image, from view 1 (MoCo keeps one key per image; it halves
the momentum encoder's cost). The queue accepts any [n, dim] batch, so a
trainer may pass both views instead. Keys enter the queue in the order of the
global batch: replica 0's rows, then replica 1's, and so on, which is the
order `Strategy.experimental_distribute_dataset` splits a global batch in. So
the queue is identical for the same global batch under any replica count.

Queue layout: `keys` [size, dim] float32 is a ring buffer; `pointer` (int64)
is the next row to overwrite and `filled` (int64) the number of valid rows.
Rows are written from row 0 onwards, so while filling the valid rows are
exactly `keys[:filled]`; once full, every row is valid. `negatives()`
returns `keys[:filled]` in storage order (the loss does not depend on the
order of negative columns); `ordered_keys()` returns them oldest first. A
batch larger than the queue keeps only its last `size` rows.

Persistent memory: `keys` is size * dim * 4 bytes; `pointer` and `filled` add
16 bytes. Under a mirrored strategy each replica device holds one copy, like
every other variable. `enqueue` writes rows in place (a sparse scatter), it
does not rebuild the buffer.

Replicas: the variables use `ON_WRITE` synchronisation with `ONLY_FIRST_REPLICA`
aggregation. `enqueue`, called in replica context, gathers every replica's
keys in replica-id order (each replica fills its slot of a zero tensor, then a
SUM all-reduce: exact, since only zeros are added) and writes them; the write
takes replica 0's values and broadcasts them, so replica copies can never
diverge. Every replica must pass the same number of keys.

XLA: `enqueue`, `compute_keys` and `update` compile. `negatives()` slices by
the run-time fill count, so its leading dimension is dynamic (bounded by
`size`); XLA accepts it, inside or outside the compiled function, but compiles
once per distinct queue length. The length only changes while the queue
fills, so that is at most ceil(size / keys per step) + 1 compilations; once
full the shape is [size, dim] and the compiled step is reused.

Batch norm in the momentum encoder: keys are computed in training mode, i.e.
with batch statistics, as MoCo does for its key encoder. MoCo shuffles the
batch across devices before the key encoder ("shuffling BN") so that per-device
statistics cannot leak which key belongs to which query. With global
(synchronised) BN the statistics are computed over the whole global batch, so
a cross-replica shuffle would not change them: shuffling is a no-op and is not
implemented. Besides, positives here come from the online encoder, never from
the queue, and the current batch's keys are only enqueued after the loss, so
the keys never serve as positives. With per-replica BN (global_bn=False) and
several replicas, statistics are per replica, as in the online model. The EMA
covers all trainable weights, including BN gamma and beta; BN moving mean and
variance are not averaged: they are never used for keys (training mode) and
track the momentum encoder's own batches, as MoCo's key-encoder buffers do.
`initialize_from` copies every weight, moving statistics included.

Integration (per-step order, inside `strategy.run`)
---------------------------------------------------
Set-up, eagerly under `strategy.scope()`, after the online `model` is built
and warm-started:

  twin = builder.build_model(
      model_config,
      dataclasses.replace(head_config, lineareval_while_pretraining=False),
      builder.TRAIN_MODE_PRETRAIN)
  twin(tf.zeros([1, image_size, image_size, 3]), training=False)  # Build.
  momentum = memory_bank.MomentumEncoder(twin)
  momentum.initialize_from(model)
  queue = memory_bank.NegativeQueue(memory_size, head_config.proj_out_dim)
  # Checkpoint both (restoring a resumed run overwrites the initial copy):
  checkpoints.make_checkpoint_manager(
      model, optimizer, model_dir, max_to_keep,
      extra={"momentum_encoder": momentum, "negative_queue": queue})

Per replica step:

  def replica_step(batch):
    view1, view2 = batch["view1"], batch["view2"]
    keys = momentum.compute_keys(view1)        # 1. No tape, no gradient.
    negatives = queue.negatives()              # 2. Read before the enqueue.
    with tf.GradientTape() as tape:
      outputs = model(tf.concat([view1, view2], 0), training=True)
      loss = losses.nt_xent_loss(
          outputs[simclr_model.PROJ_HEAD_OUTPUT], temperature,
          hidden_norm, extra_negatives=negatives)[losses.LOSS]
      scaled = loss / strategy.num_replicas_in_sync
    variables = model.trainable_variables
    gradients = tape.gradient(scaled, variables)
    optimizer.apply_gradients(zip(gradients, variables))   # 3.
    queue.enqueue(keys)                        # 4. All replicas' keys.
    momentum.update(model, memory_momentum)    # 5. EMA with the new weights.

Updating the momentum encoder at the end of step t with the online weights
after step t gives the keys of step t+1 exactly the weights MoCo would use
(MoCo updates at the start of step t+1 with the same online weights).
"""

from __future__ import annotations

from typing import List, Tuple, Union

import tensorflow as tf
import tf_keras as keras

from tf_simclr.models import simclr_model

# `tf.math.l2_normalize` default, as in losses.py.
_L2_NORM_EPSILON = 1e-12

_SYNC = tf.VariableSynchronization.ON_WRITE
_AGGREGATION = tf.VariableAggregation.ONLY_FIRST_REPLICA

VariablePairs = List[Tuple[tf.Variable, tf.Variable]]


def _check_positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _gather_global_batch(tensor: tf.Tensor) -> tf.Tensor:
  """Concatenates every replica's rows in replica-id order.

  Outside a replica context (eager code, or a strategy's cross-replica
  context) `tensor` is taken to be the whole global batch already.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return tensor
  # Each replica fills its own slot of a zero tensor and the slots are summed:
  # adding zeros is exact, and a float all-reduce is the collective every
  # strategy (and sync BN) already uses, unlike all_gather, which also
  # gathers int32 shapes first.
  num_replicas = context.num_replicas_in_sync
  replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
  slots = tf.scatter_nd(
      indices=tf.reshape(replica_id, [1, 1]),
      updates=tensor[tf.newaxis],
      shape=tf.concat([[num_replicas], tf.shape(tensor)], axis=0))
  gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, slots)
  return tf.reshape(gathered, tf.concat([[-1], tf.shape(tensor)[1:]], 0))


def _in_cross_replica(fn, *args) -> None:
  """Runs fn(strategy, *args) in cross-replica context from either context."""
  if tf.distribute.in_cross_replica_context():
    fn(tf.distribute.get_strategy(), *args)
  else:
    tf.distribute.get_replica_context().merge_call(fn, args=args)


class NegativeQueue(tf.Module):
  """FIFO ring buffer of L2-normalised keys used as extra NT-Xent negatives.

  Create it under the training strategy's scope. See the module docstring for
  the layout, the key order and the XLA caveat of `negatives()`.

  Args:
    size: number of keys kept (N >= 1; a memory size of 0 means "no queue",
      so create none).
    dim: key width (the projection head's output width).
    name: module name (also the variables' name scope).
  """

  def __init__(self, size: int, dim: int, name: str = "negative_queue"):
    _check_positive_int("size", size)
    _check_positive_int("dim", dim)
    super().__init__(name=name)
    self.size = size
    self.dim = dim
    with self.name_scope:
      self.keys = tf.Variable(
          lambda: tf.zeros([size, dim], tf.float32), trainable=False,
          name="keys", synchronization=_SYNC, aggregation=_AGGREGATION)
      self.pointer = tf.Variable(
          lambda: tf.constant(0, tf.int64), trainable=False, name="pointer",
          synchronization=_SYNC, aggregation=_AGGREGATION)
      self.filled = tf.Variable(
          lambda: tf.constant(0, tf.int64), trainable=False, name="filled",
          synchronization=_SYNC, aggregation=_AGGREGATION)

  def negatives(self) -> tf.Tensor:
    """The valid keys, [min(filled, size), dim] float32, storage order.

    The leading dimension is dynamic (0 for an empty queue, which makes
    NT-Xent exactly the plain loss; see the module docstring for XLA). No
    gradient flows into the queue.
    """
    count = tf.minimum(self.filled, self.size)
    keys = tf.convert_to_tensor(self.keys)
    return tf.stop_gradient(keys[:count])

  def ordered_keys(self) -> tf.Tensor:
    """The valid keys oldest first, [min(filled, size), dim] float32."""
    count = tf.minimum(self.filled, self.size)
    oldest = tf.math.floormod(tf.convert_to_tensor(self.pointer) - count,
                              self.size)
    rows = tf.math.floormod(oldest + tf.range(count, dtype=tf.int64),
                            self.size)
    return tf.gather(tf.convert_to_tensor(self.keys), rows)

  def enqueue(self, keys: tf.Tensor) -> None:
    """Appends the global batch of keys, overwriting the oldest rows.

    In replica context every replica passes its own [b, dim] keys; they are
    all-gathered in replica-id order and written identically everywhere. In
    cross-replica context (or without a strategy) `keys` is the whole global
    batch. Call it after the loss that read `negatives()`.

    Args:
      keys: [n, dim] keys, normally L2-normalised by
        `MomentumEncoder.compute_keys`; cast to float32, no gradient kept.

    Raises:
      ValueError: if `keys` does not have shape [n, dim].
    """
    keys = tf.convert_to_tensor(keys)
    if keys.shape.rank != 2 or keys.shape[1] != self.dim:
      raise ValueError(
          f"keys must have shape [n, {self.dim}], got {keys.shape}")
    keys = tf.stop_gradient(tf.cast(keys, tf.float32))
    gathered = _gather_global_batch(keys)
    total = tf.cast(tf.shape(gathered)[0], tf.int64)
    # Rows beyond the last `size` would be overwritten within this very
    # batch; dropping them keeps the scatter free of duplicate indices.
    kept = tf.minimum(total, self.size)
    skipped = total - kept
    rows = gathered[skipped:]
    pointer = tf.convert_to_tensor(self.pointer)
    indices = tf.math.floormod(
        pointer + skipped + tf.range(kept, dtype=tf.int64), self.size)
    self.keys.scatter_update(tf.IndexedSlices(rows, indices))
    self.pointer.assign(tf.math.floormod(pointer + total, self.size))
    self.filled.assign(tf.minimum(self.filled + total, self.size))


def _encoder_parts(model: keras.Model, arg_name: str):
  parts = []
  for attribute in ("backbone", "projection_head"):
    part = getattr(model, attribute, None)
    if not isinstance(part, keras.layers.Layer):
      raise ValueError(
          f"{arg_name} must have keras Layer attributes 'backbone' and "
          f"'projection_head' (a SimCLRModel), got {model!r}")
    parts.append(part)
  return parts


def _pair_variables(targets: List[tf.Variable], sources: List[tf.Variable],
                    kind: str) -> VariablePairs:
  if len(targets) != len(sources) or any(
      t.shape != s.shape for t, s in zip(targets, sources)):
    raise ValueError(
        f"online_model must have the momentum model's architecture, got "
        f"{len(sources)} {kind} variables of shapes "
        f"{[tuple(s.shape) for s in sources]} for "
        f"{len(targets)} of shapes {[tuple(t.shape) for t in targets]} "
        "(build both models before pairing them)")
  return list(zip(targets, sources))


def _ema(target: tf.Variable, source: tf.Variable,
         momentum: tf.Tensor) -> tf.Operation:
  momentum = tf.cast(momentum, target.dtype)
  return target.assign(momentum * target + (1.0 - momentum) * source)


def _copy(target: tf.Variable, source: tf.Variable) -> tf.Operation:
  return target.assign(source)


class MomentumEncoder(tf.Module):
  """EMA twin of the online backbone + projection head that computes keys.

  Create it under the training strategy's scope with a freshly built twin of
  the online model (same architecture, no supervised head), then call
  `initialize_from(online_model)`. Its variables are never given to the
  optimizer; they change only through `update` (and, for BN moving
  statistics, through its own training-mode forward passes). See the module
  docstring for the batch-norm choice.

  Args:
    model: the twin, a built `SimCLRModel` (or any keras Model with
      `backbone` and `projection_head` layers whose call returns
      PROJ_HEAD_OUTPUT) without a supervised head.
    name: module name.
  """

  def __init__(self, model: keras.Model, name: str = "momentum_encoder"):
    if not isinstance(model, keras.Model):
      raise ValueError(f"model must be a keras Model, got {model!r}")
    _encoder_parts(model, "model")
    if getattr(model, "supervised_head", None) is not None:
      raise ValueError(
          "model must have no supervised head (build the twin with "
          "lineareval_while_pretraining=False), got supervised_head="
          f"{model.supervised_head!r}")
    super().__init__(name=name)
    self.model = model

  def _pairs(self, online_model: keras.Model, trainable_only: bool
             ) -> VariablePairs:
    if online_model is self.model:
      raise ValueError(
          "online_model must be a different model from the momentum model")
    targets = _encoder_parts(self.model, "model")
    sources = _encoder_parts(online_model, "online_model")
    pairs = _pair_variables(
        [v for part in targets for v in part.trainable_weights],
        [v for part in sources for v in part.trainable_weights], "trainable")
    if not pairs:
      raise ValueError("the models have no variables yet: build both first")
    if not trainable_only:
      pairs += _pair_variables(
          [v for part in targets for v in part.non_trainable_weights],
          [v for part in sources for v in part.non_trainable_weights],
          "non-trainable")
    return pairs

  def initialize_from(self, online_model: keras.Model) -> None:
    """Copies every weight (BN moving statistics included) of online_model.

    Call it once at the start of training, before restoring a checkpoint of
    an interrupted run (which then overwrites the copy).

    Args:
      online_model: the built online model (a SimCLRModel; its supervised
        head, if any, is ignored).
    """
    pairs = self._pairs(online_model, trainable_only=False)

    def copy_all(strategy):
      for target, source in pairs:
        strategy.extended.update(target, _copy, args=(source,))

    _in_cross_replica(copy_all)

  def update(self, online_model: keras.Model,
             momentum: Union[float, tf.Tensor]) -> None:
    """EMA step on the trainable weights: w <- m * w + (1 - m) * w_online.

    Works in replica context (after the optimizer step) and cross-replica
    context; each device averages its own copies, which mirrored variables
    keep identical.

    Args:
      online_model: the online model, after this step's update.
      momentum: m in [0, 1] (the paper uses 0.999); a float or a scalar
        tensor (for a schedule).

    Raises:
      ValueError: if a static `momentum` is outside [0, 1].
    """
    static = tf.get_static_value(momentum)
    if static is not None and not 0.0 <= float(static) <= 1.0:
      raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    pairs = self._pairs(online_model, trainable_only=True)
    momentum = tf.convert_to_tensor(momentum, tf.float32)

    def ema_all(strategy, momentum):
      for target, source in pairs:
        strategy.extended.update(target, _ema, args=(source, momentum))

    _in_cross_replica(ema_all, momentum)

  def compute_keys(self, images: tf.Tensor) -> tf.Tensor:
    """L2-normalised float32 projections of `images`, without gradient.

    Runs the momentum model in training mode (batch statistics; its BN
    moving statistics update too). Call it outside the GradientTape of the
    online loss so the tape does not record the momentum forward pass.

    Args:
      images: [n, H, W, 3] images, normally the view-1 batch of the replica.

    Returns:
      [n, proj_out_dim] float32 keys.
    """
    outputs = self.model(images, training=True)
    projections = tf.cast(outputs[simclr_model.PROJ_HEAD_OUTPUT], tf.float32)
    keys = tf.math.l2_normalize(projections, axis=-1, epsilon=_L2_NORM_EPSILON)
    return tf.stop_gradient(keys)
