"""Contrastive (NT-Xent) and supervised losses and their metrics (SPEC §3).

Everything here is plain TensorFlow: no Keras, no flags, and it runs unchanged
eagerly, inside `tf.function`, under XLA (`jit_compile=True`, single replica)
and inside a `tf.distribute` replica context.
"""

from typing import Dict, Optional, Tuple, Union

import tensorflow as tf

LOSS = "loss"
CONTRAST_ACCURACY = "contrast_accuracy"
CONTRAST_ENTROPY = "contrast_entropy"
LOGITS = "logits"
LABELS = "labels"

# Subtracted from self-similarity logits (after division by the temperature) so
# that an anchor never counts itself as a candidate; the reference value, kept
# so logged logits match it.
LARGE_NUM = 1e9

# The reference adds this inside log() when computing the contrastive entropy.
_ENTROPY_EPSILON = 1e-8

# `tf.math.l2_normalize` default: the squared norm is clamped to this value.
_L2_NORM_EPSILON = 1e-12

_HALF_DTYPES = (tf.float16, tf.bfloat16)

TensorLike = Union[tf.Tensor, float]


def _check_temperature(temperature: TensorLike) -> None:
  static = tf.get_static_value(temperature)
  if static is None:
    return  # A traced tensor: the caller owns its validity.
  if not static > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _to_loss_dtype(tensor: tf.Tensor) -> tf.Tensor:
  # -LARGE_NUM is not representable in float16, and half-precision softmax
  # over thousands of negatives is too coarse, so the loss runs in float32.
  if tensor.dtype in _HALF_DTYPES:
    return tf.cast(tensor, tf.float32)
  return tensor


def _replica_info() -> Tuple[int, tf.Tensor]:
  """(number of replicas, this replica's id); (1, 0) outside a replica context.

  Outside a replica context (eager code, or a strategy's cross-replica
  context) the inputs are ordinary tensors, so the loss is computed locally.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return 1, tf.constant(0, tf.int32)
  return (context.num_replicas_in_sync,
          tf.cast(context.replica_id_in_sync_group, tf.int32))


def _gather_from_replicas(tensor: tf.Tensor) -> tf.Tensor:
  """Stacks every replica's `tensor` along a new leading axis, replica order.

  Each replica writes its value into its own slot of a zero tensor and the
  slots are summed across replicas. The gradient of an all-reduce SUM is an
  all-reduce SUM of the upstream gradients, so every replica's embeddings
  receive the gradient of every replica's loss terms that used them.

  Args:
    tensor: the local tensor; identical shape on every replica.

  Returns:
    A tensor of shape [R, *tensor.shape]; with one replica (or outside a
    replica context) just `tensor[None]`, with no collective.
  """
  num_replicas, replica_id = _replica_info()
  if num_replicas == 1:
    return tensor[tf.newaxis]
  slots = tf.scatter_nd(
      indices=tf.reshape(replica_id, [1, 1]),
      updates=tensor[tf.newaxis],
      shape=tf.concat([[num_replicas], tf.shape(tensor)], axis=0))
  context = tf.distribute.get_replica_context()
  return context.all_reduce(tf.distribute.ReduceOp.SUM, slots)


def nt_xent_loss(
    projections: tf.Tensor,
    temperature: TensorLike = 0.1,
    hidden_norm: bool = True,
    extra_negatives: Optional[tf.Tensor] = None,
) -> Dict[str, tf.Tensor]:
  """NT-Xent contrastive loss over the global batch (SPEC §3.1, §3.2).

  Each local view-1 row is an anchor whose positive is the same example's
  view-2 row, and vice versa; every other row of both views on every replica
  is a negative. The returned loss is the mean over local rows of the sum of
  both directions (reference quirk Q10: twice the "averaged" convention).

  Args:
    projections: [2b, d] float tensor on each replica, view-1 rows then view-2
      rows. The batch dimension must be statically known and even.
    temperature: softmax temperature τ > 0.
    hidden_norm: whether to L2-normalise rows first (`tf.math.l2_normalize`
      semantics).
    extra_negatives: optional [K, d] tensor of additional negatives shared by
      every replica (e.g. a memory bank), already normalised; they are appended
      as extra logit columns z·Qᵀ/τ for both directions. Gradients flow into it
      unless the caller stops them. None or K=0 gives plain NT-Xent exactly.

  Returns:
    A dict with
      LOSS: scalar contrastive loss.
      CONTRAST_ACCURACY: fraction of local view-1 anchors whose argmax over
        the other-view block (ab) is their positive.
      CONTRAST_ENTROPY: mean entropy of the softmax over the ab block.
      LOGITS: [b, 2Rb + K] logits of the view-1 anchors, ab | aa | a·Qᵀ (the
        self-similarity column of aa is masked with -LARGE_NUM).
      LABELS: [b, 2Rb + K] one-hot float labels of those logits (the positive
        sits in the ab block at the anchor's global index r·b + i).

  Raises:
    ValueError: if `temperature` is not positive, or the shapes of
      `projections` / `extra_negatives` are unsuitable.
  """
  _check_temperature(temperature)
  projections = tf.convert_to_tensor(projections)
  if not projections.dtype.is_floating:
    raise ValueError(
        f"projections must be a floating-point tensor, got {projections.dtype}")
  if projections.shape.rank != 2:
    raise ValueError(
        f"projections must have shape [2b, d], got {projections.shape}")
  two_b = projections.shape[0]
  if two_b is None or two_b == 0 or two_b % 2:
    raise ValueError("projections must have a static, positive, even batch "
                     f"dimension (view-1 rows then view-2 rows), got "
                     f"{projections.shape}")
  local_batch = two_b // 2

  z = _to_loss_dtype(projections)
  if hidden_norm:
    z = tf.math.l2_normalize(z, axis=-1, epsilon=_L2_NORM_EPSILON)
  z1, z2 = z[:local_batch], z[local_batch:]

  num_replicas, replica_id = _replica_info()
  gathered = _gather_from_replicas(z)  # [R, 2b, d]
  dim = tf.shape(z)[1]
  z1_all = tf.reshape(gathered[:, :local_batch], [-1, dim])
  z2_all = tf.reshape(gathered[:, local_batch:], [-1, dim])
  global_batch = num_replicas * local_batch

  positives = replica_id * local_batch + tf.range(local_batch)
  labels = tf.one_hot(positives, 2 * global_batch, dtype=z.dtype)
  self_mask = tf.one_hot(positives, global_batch, dtype=z.dtype)
  temperature = tf.cast(temperature, z.dtype)

  logits_aa = tf.matmul(z1, z1_all, transpose_b=True) / temperature
  logits_aa -= self_mask * LARGE_NUM
  logits_bb = tf.matmul(z2, z2_all, transpose_b=True) / temperature
  logits_bb -= self_mask * LARGE_NUM
  logits_ab = tf.matmul(z1, z2_all, transpose_b=True) / temperature
  logits_ba = tf.matmul(z2, z1_all, transpose_b=True) / temperature

  logits_a = tf.concat([logits_ab, logits_aa], axis=1)
  logits_b = tf.concat([logits_ba, logits_bb], axis=1)
  loss_labels = labels
  if extra_negatives is not None:
    queue = _to_loss_dtype(tf.convert_to_tensor(extra_negatives))
    if queue.shape.rank != 2:
      raise ValueError(
          f"extra_negatives must have shape [K, d], got {queue.shape}")
    if (queue.shape[1] is not None and projections.shape[1] is not None and
        queue.shape[1] != projections.shape[1]):
      raise ValueError(
          f"extra_negatives must have shape [K, {projections.shape[1]}] to "
          f"match projections, got {queue.shape}")
    queue = tf.cast(queue, z.dtype)
    logits_a = tf.concat(
        [logits_a, tf.matmul(z1, queue, transpose_b=True) / temperature],
        axis=1)
    logits_b = tf.concat(
        [logits_b, tf.matmul(z2, queue, transpose_b=True) / temperature],
        axis=1)
    # The queue columns never hold a positive.
    loss_labels = tf.pad(labels, [[0, 0], [0, tf.shape(queue)[0]]])

  loss_a = tf.nn.softmax_cross_entropy_with_logits(loss_labels, logits_a)
  loss_b = tf.nn.softmax_cross_entropy_with_logits(loss_labels, logits_b)
  loss = tf.reduce_mean(loss_a + loss_b)

  predicted = tf.argmax(logits_ab, axis=1, output_type=tf.int32)
  accuracy = tf.reduce_mean(
      tf.cast(tf.equal(predicted, positives), tf.float32))
  probs_ab = tf.nn.softmax(logits_ab, axis=1)
  entropy = -tf.reduce_mean(
      tf.reduce_sum(probs_ab * tf.math.log(probs_ab + _ENTROPY_EPSILON),
                    axis=1))

  return {
      LOSS: loss,
      CONTRAST_ACCURACY: accuracy,
      CONTRAST_ENTROPY: entropy,
      LOGITS: logits_a,
      LABELS: loss_labels,
  }


def _check_classification_inputs(labels: tf.Tensor,
                                 logits: tf.Tensor) -> None:
  if labels.shape.rank is not None and labels.shape.rank != 1:
    raise ValueError(f"labels must have shape [n], got {labels.shape}")
  if labels.dtype.is_floating:
    raise ValueError(f"labels must be integer class ids, got {labels.dtype}")
  if logits.shape.rank is not None and logits.shape.rank != 2:
    raise ValueError(f"logits must have shape [n, classes], got {logits.shape}")
  if not labels.shape[:1].is_compatible_with(logits.shape[:1]):
    raise ValueError("labels and logits must have the same batch size, got "
                     f"{labels.shape} and {logits.shape}")


def supervised_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Softmax cross-entropy averaged over the local batch (SPEC §3.3).

  Args:
    labels: [n] integer class ids.
    logits: [n, classes] unnormalised scores.

  Returns:
    Scalar mean cross-entropy (float32 for half-precision logits).

  Raises:
    ValueError: on incompatible shapes or non-integer labels.
  """
  labels = tf.convert_to_tensor(labels)
  logits = _to_loss_dtype(tf.convert_to_tensor(logits))
  _check_classification_inputs(labels, logits)
  per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits)
  return tf.reduce_mean(per_example)


def top_k_accuracy(labels: tf.Tensor, logits: tf.Tensor, k: int) -> tf.Tensor:
  """Fraction of rows whose label is among the k highest logits.

  Ties are resolved in favour of the label, as `tf.math.in_top_k` and the
  Keras top-k metrics do: a row counts as correct when fewer than k classes
  score strictly higher than its label.

  Args:
    labels: [n] integer class ids.
    logits: [n, classes] scores.
    k: number of top classes to accept, >= 1.

  Returns:
    Scalar float32 accuracy.

  Raises:
    ValueError: if `k` < 1, or on incompatible shapes or non-integer labels.
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be an integer >= 1, got {k!r}")
  labels = tf.convert_to_tensor(labels)
  logits = tf.convert_to_tensor(logits)
  _check_classification_inputs(labels, logits)
  # Counting strictly-higher scores (rather than calling in_top_k) keeps the
  # op XLA-compilable.
  label_scores = tf.gather(logits, labels, axis=1, batch_dims=1)
  num_higher = tf.reduce_sum(
      tf.cast(logits > label_scores[:, tf.newaxis], tf.int32), axis=1)
  return tf.reduce_mean(tf.cast(num_higher < k, tf.float32))
