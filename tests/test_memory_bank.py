"""Tests for the MoCo-style negative queue and momentum encoder (issue 6)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr import losses
from tf_simclr.models import heads
from tf_simclr.models import memory_bank
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model

IMAGE_SHAPE = (6, 6, 3)
PROJ_DIM = 3

_collective_key_bases = itertools.count(7000, 100)


@pytest.fixture(autouse=True)
def _own_collective_keys(monkeypatch):
  # Every MirroredStrategy in a process starts from the same collective group
  # and instance keys, and the runtime remembers each instance's shape, so
  # collectives of different shapes from two strategies collide. Autouse
  # fixtures run first, so `two_cpu_strategy` picks up a fresh key range
  # (the attribute exists for tests).
  monkeypatch.setattr(tf.distribute.MirroredStrategy, "_collective_key_base",
                      next(_collective_key_bases))


class _TinyBackbone(keras.layers.Layer):
  """Conv + BN + ReLU + global pool: a ResNet stand-in with BN statistics."""

  def __init__(self, global_bn: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.global_bn = global_bn
    self.conv = keras.layers.Conv2D(4, 3, use_bias=False)
    self.bn = keras.layers.BatchNormalization(synchronized=global_bn)

  def call(self, images, training=None):
    x = tf.nn.relu(self.bn(self.conv(images), training=training))
    return {resnet.FINAL_AVG_POOL: tf.reduce_mean(x, axis=[1, 2])}


def _tiny_model(global_bn=False, seed=0, supervised=False):
  keras.utils.set_random_seed(seed)
  model = simclr_model.SimCLRModel(
      _TinyBackbone(global_bn),
      heads.ProjectionHead(num_layers=2, out_dim=PROJ_DIM,
                           global_bn=global_bn),
      heads.SupervisedHead(2) if supervised else None)
  model(tf.zeros((1,) + IMAGE_SHAPE), training=False)
  return model


def _np_l2_normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.maximum((x * x).sum(-1, keepdims=True), 1e-12))


def _np_nt_xent(projections, queue, temperature):
  """Loop-based reference: each anchor against positive, batch and queue."""
  z = _np_l2_normalize(projections)
  queue = np.asarray(queue, np.float64).reshape(-1, z.shape[1])
  b = len(z) // 2
  views = (z[:b], z[b:])
  total = 0.0
  for i in range(b):
    for a in range(2):
      anchor, same, other = views[a][i], views[a], views[1 - a]
      candidates = [anchor @ other[j] for j in range(b)]
      candidates += [anchor @ same[j] for j in range(b) if j != i]
      candidates += [anchor @ q for q in queue]
      logits = np.array(candidates) / temperature
      top = logits.max()
      log_sum = top + np.log(np.exp(logits - top).sum())
      total += log_sum - anchor @ other[i] / temperature
  return total / b


def _distribute(strategy, global_batch):
  """Per-replica slices of a global batch, replica 0 first."""
  num = strategy.num_replicas_in_sync
  local = global_batch.shape[0] // num

  def value_fn(context):
    start = context.replica_id_in_sync_group * local
    return tf.constant(global_batch[start:start + local])

  return strategy.experimental_distribute_values_from_function(value_fn)


# ----------------------------------------------------------------- the queue


def test_queue_validates_arguments():
  with pytest.raises(ValueError, match="size must be a positive integer"):
    memory_bank.NegativeQueue(0, 4)
  with pytest.raises(ValueError, match="dim must be a positive integer"):
    memory_bank.NegativeQueue(4, 2.0)
  queue = memory_bank.NegativeQueue(4, 3)
  with pytest.raises(ValueError, match=r"keys must have shape \[n, 3\]"):
    queue.enqueue(tf.zeros([2, 4]))


def test_queue_fifo_wraps_and_keeps_last_n_in_order():
  size, dim, batch, steps = 5, 2, 2, 4  # 8 keys through a queue of 5.
  queue = memory_bank.NegativeQueue(size, dim)
  assert queue.negatives().shape == (0, dim)
  keys = np.arange(steps * batch * dim, dtype=np.float32).reshape(-1, dim)

  queue.enqueue(keys[:batch])
  np.testing.assert_array_equal(queue.negatives(), keys[:2])
  assert int(queue.filled) == 2 and int(queue.pointer) == 2

  for step in range(1, steps):
    queue.enqueue(keys[step * batch:(step + 1) * batch])
  # Keys 3..7 survive; storage is the ring [5, 6, 7, 3, 4].
  np.testing.assert_array_equal(queue.ordered_keys(), keys[3:8])
  np.testing.assert_array_equal(queue.negatives(), keys[[5, 6, 7, 3, 4]])
  assert int(queue.pointer) == 3 and int(queue.filled) == 5


def test_queue_batch_larger_than_queue_keeps_its_last_rows():
  queue = memory_bank.NegativeQueue(3, 1)
  queue.enqueue(np.array([[10.0]], np.float32))
  queue.enqueue(np.arange(7, dtype=np.float32)[:, None])  # 8 keys in total.
  np.testing.assert_array_equal(queue.ordered_keys()[:, 0], [4, 5, 6])
  assert int(queue.pointer) == 8 % 3 and int(queue.filled) == 3


def test_queue_memory_is_n_times_dim_times_4_bytes():
  size, dim = 1000, 128
  queue = memory_bank.NegativeQueue(size, dim)
  sizes = {v.name: v.shape.num_elements() * v.dtype.size
           for v in queue.variables}
  assert sizes == {"negative_queue/keys:0": size * dim * 4,
                   "negative_queue/pointer:0": 8,
                   "negative_queue/filled:0": 8}
  assert not queue.trainable_variables


def test_queue_identical_under_one_and_two_replicas(two_cpu_strategy):
  size, dim, global_batch, steps = 7, 3, 4, 5  # Wraps: 20 keys, 7 slots.
  rng = np.random.default_rng(0)
  batches = rng.normal(size=(steps, global_batch, dim)).astype(np.float32)

  single = memory_bank.NegativeQueue(size, dim)
  for keys in batches:
    single.enqueue(keys)

  with two_cpu_strategy.scope():
    mirrored = memory_bank.NegativeQueue(size, dim)

  @tf.function
  def replica_enqueue(local_keys):
    two_cpu_strategy.run(mirrored.enqueue, args=(local_keys,))

  for keys in batches:
    replica_enqueue(_distribute(two_cpu_strategy, keys))

  expected = batches.reshape(-1, dim)[-size:]
  np.testing.assert_array_equal(single.ordered_keys(), expected)
  for variable in (mirrored.keys, mirrored.pointer, mirrored.filled):
    copies = [v.numpy() for v in variable.values]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
  np.testing.assert_array_equal(mirrored.ordered_keys(), expected)
  np.testing.assert_array_equal(mirrored.keys.values[1], single.keys)
  assert int(mirrored.pointer.numpy()) == int(single.pointer) == 20 % size


def test_queue_checkpoint_roundtrip(tmp_path):
  rng = np.random.default_rng(1)
  queue = memory_bank.NegativeQueue(4, 2)
  queue.enqueue(rng.normal(size=(3, 2)).astype(np.float32))
  queue.enqueue(rng.normal(size=(3, 2)).astype(np.float32))
  path = tf.train.Checkpoint(queue=queue).save(str(tmp_path / "ckpt"))

  restored = memory_bank.NegativeQueue(4, 2)
  restored.enqueue(np.ones([1, 2], np.float32))
  tf.train.Checkpoint(queue=restored).restore(path).assert_consumed()
  np.testing.assert_array_equal(restored.keys, queue.keys)
  assert int(restored.pointer) == 2 and int(restored.filled) == 4


# ------------------------------------------------------------------ the loss


def test_loss_with_queue_closed_form():
  # Anchor [1, 0]: positive logit 0, queue logit 1 -> log(1 + e).
  # Anchor [0, 1]: positive logit 0, queue logit 0 -> log(2).
  queue = memory_bank.NegativeQueue(2, 2)
  queue.enqueue(np.array([[1.0, 0.0]], np.float32))
  result = losses.nt_xent_loss(
      np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), temperature=1.0,
      extra_negatives=queue.negatives())
  np.testing.assert_allclose(result[losses.LOSS], 2.0064089, rtol=1e-6)


@pytest.mark.parametrize("keys_enqueued", [3, 11])  # Partial; wrapped.
def test_loss_with_queue_matches_numpy_reference(keys_enqueued):
  rng = np.random.default_rng(keys_enqueued)
  projections = rng.normal(size=(8, 5)).astype(np.float32)
  queue = memory_bank.NegativeQueue(6, 5)
  raw_keys = rng.normal(size=(keys_enqueued, 5)).astype(np.float32)
  for start in range(0, keys_enqueued, 2):
    queue.enqueue(_np_l2_normalize(raw_keys[start:start + 2]).astype(
        np.float32))
  live = _np_l2_normalize(raw_keys)[-min(keys_enqueued, 6):]

  loss = losses.nt_xent_loss(projections, temperature=0.2,
                             extra_negatives=queue.negatives())[losses.LOSS]
  np.testing.assert_allclose(
      loss, _np_nt_xent(projections, live, 0.2), rtol=2e-5)
  plain = _np_nt_xent(projections, np.zeros([0, 5]), 0.2)
  assert float(loss) > plain + 0.1  # The queue really adds negatives.


def test_empty_queue_loss_and_gradients_equal_plain_nt_xent():
  projections = tf.constant(
      np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32))
  queue = memory_bank.NegativeQueue(8, 4)

  def loss_and_grad(use_queue):
    with tf.GradientTape() as tape:
      tape.watch(projections)
      loss = losses.nt_xent_loss(
          projections, temperature=0.5,
          extra_negatives=queue.negatives() if use_queue else None)[
              losses.LOSS]
    return loss, tape.gradient(loss, projections)

  for fn in (loss_and_grad, tf.function(loss_and_grad)):
    plain_loss, plain_grad = fn(False)
    queue_loss, queue_grad = fn(True)
    assert float(plain_loss) > 0.0
    np.testing.assert_array_equal(queue_loss, plain_loss)
    np.testing.assert_array_equal(queue_grad, plain_grad)


def test_queue_and_loss_under_xla_match_eager():
  rng = np.random.default_rng(7)
  projections = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))
  batches = _np_l2_normalize(rng.normal(size=(3, 2, 3))).astype(np.float32)
  eager = memory_bank.NegativeQueue(5, 3)
  compiled = memory_bank.NegativeQueue(5, 3)
  enqueue = tf.function(compiled.enqueue, jit_compile=True)
  loss = tf.function(
      lambda z: losses.nt_xent_loss(z, 0.5, extra_negatives=(
          compiled.negatives()))[losses.LOSS], jit_compile=True)
  for keys in batches:  # Queue lengths 0, 2, 4 (three compilations).
    expected = losses.nt_xent_loss(projections, 0.5,
                                   extra_negatives=eager.negatives())
    np.testing.assert_allclose(loss(projections), expected[losses.LOSS],
                               rtol=1e-6)
    eager.enqueue(keys)
    enqueue(keys)
  np.testing.assert_array_equal(compiled.keys, eager.keys)
  np.testing.assert_array_equal(compiled.ordered_keys(),
                                batches.reshape(-1, 3)[-5:])


# ------------------------------------------------------ the momentum encoder


def test_momentum_encoder_validates_arguments():
  online = _tiny_model(seed=0)
  with pytest.raises(ValueError, match="model must have no supervised head"):
    memory_bank.MomentumEncoder(_tiny_model(seed=1, supervised=True))
  with pytest.raises(ValueError, match="'backbone' and 'projection_head'"):
    memory_bank.MomentumEncoder(keras.Sequential([keras.layers.Dense(1)]))
  momentum = memory_bank.MomentumEncoder(_tiny_model(seed=1))
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
    momentum.update(online, 1.5)
  with pytest.raises(ValueError, match="must be a different model"):
    momentum.update(momentum.model, 0.9)
  other = simclr_model.SimCLRModel(
      _TinyBackbone(), heads.ProjectionHead(num_layers=1, out_dim=PROJ_DIM))
  other(tf.zeros((1,) + IMAGE_SHAPE))
  with pytest.raises(ValueError, match="online_model must have the momentum"):
    momentum.initialize_from(other)


def _randomise(model, rng):
  for variable in model.weights:
    variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))


def test_initialize_from_copies_all_weights_and_update_is_ema():
  rng = np.random.default_rng(3)
  online = _tiny_model(seed=0, supervised=True)  # The head is ignored.
  momentum = memory_bank.MomentumEncoder(_tiny_model(seed=1))
  _randomise(online, rng)
  momentum.initialize_from(online)
  twin = momentum.model
  # Backbone: kernel + BN (gamma, beta, mean, variance); head: 2 kernels,
  # BN_0 (gamma, beta, mean, variance), BN_1 (gamma, mean, variance).
  assert len(twin.weights) == 14 and len(twin.trainable_weights) == 8
  for part in ("backbone", "projection_head"):
    pairs = list(zip(getattr(twin, part).weights,
                     getattr(online, part).weights))
    assert len(pairs) == (5 if part == "backbone" else 9)
    for target, source in pairs:
      np.testing.assert_array_equal(target, source)

  _randomise(online, rng)
  _randomise(twin, rng)
  online_weights = online.backbone.weights + online.projection_head.weights
  twin_weights = twin.backbone.weights + twin.projection_head.weights
  before = [v.numpy() for v in twin_weights]
  momentum.update(online, 0.75)
  trainable = {id(v) for v in twin.trainable_weights}
  averaged = 0
  for target, old, source in zip(twin_weights, before, online_weights):
    if id(target) in trainable:
      expected = np.float32(0.75) * old + np.float32(0.25) * source.numpy()
      averaged += 1
    else:  # BN moving statistics are not averaged.
      expected = old
    np.testing.assert_array_equal(target, expected)
  assert averaged == 8


def test_ema_update_in_replica_context_keeps_replicas_identical(
    two_cpu_strategy):
  with two_cpu_strategy.scope():
    online = _tiny_model(global_bn=True, seed=0)
    momentum = memory_bank.MomentumEncoder(_tiny_model(global_bn=True,
                                                       seed=1))
  expected = [np.float32(0.5) * t.numpy() + np.float32(0.5) * s.numpy()
              for t, s in zip(momentum.model.trainable_weights,
                              online.trainable_weights)]

  @tf.function
  def step():
    two_cpu_strategy.run(lambda: momentum.update(online, 0.5))

  step()
  for target, value in zip(momentum.model.trainable_weights, expected):
    for copy in target.values:
      np.testing.assert_array_equal(copy, value)


def test_compute_keys_are_unit_norm_and_carry_no_gradient():
  momentum = memory_bank.MomentumEncoder(_tiny_model(seed=1))
  images = tf.random.stateless_uniform((4,) + IMAGE_SHAPE, seed=[1, 2])
  with tf.GradientTape() as tape:
    keys = momentum.compute_keys(images)
    total = tf.reduce_sum(keys)
  assert keys.dtype == tf.float32 and keys.shape == (4, PROJ_DIM)
  np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, rtol=1e-6)
  grads = tape.gradient(total, momentum.model.trainable_variables)
  assert all(g is None for g in grads)
  # Training-mode BN: batch statistics, not the (initial) moving ones.
  batch_stats = momentum.model(images, training=True)[
      simclr_model.PROJ_HEAD_OUTPUT]
  np.testing.assert_allclose(keys, _np_l2_normalize(batch_stats), rtol=1e-5)
  moving_stats = momentum.model(images, training=False)[
      simclr_model.PROJ_HEAD_OUTPUT]
  assert np.abs(keys - _np_l2_normalize(moving_stats)).max() > 0.1


# -------------------------------------------- a minimal integrated train step


class _Run:
  """The module docstring's per-step recipe around a tiny model."""

  def __init__(self, strategy, memory_size, momentum=0.9, seed=0):
    self.strategy = strategy
    with strategy.scope():
      self.model = _tiny_model(global_bn=True, seed=seed)
      self.optimizer = keras.optimizers.legacy.SGD(learning_rate=0.05)
      self.momentum = None
      self.queue = None
      if memory_size:
        self.momentum = memory_bank.MomentumEncoder(
            _tiny_model(global_bn=True, seed=seed + 100))
        self.momentum.initialize_from(self.model)
        self.queue = memory_bank.NegativeQueue(memory_size, PROJ_DIM)
    self.memory_momentum = momentum
    self.step = tf.function(self._step)

  def checkpoint(self):
    objects = {"model": self.model, "optimizer": self.optimizer}
    if self.queue is not None:
      objects.update(momentum_encoder=self.momentum,
                     negative_queue=self.queue)
    return tf.train.Checkpoint(**objects)

  def _replica_step(self, view1, view2):
    model = self.model
    negatives = None
    if self.queue is not None:
      keys = self.momentum.compute_keys(view1)
      negatives = self.queue.negatives()
    with tf.GradientTape() as tape:
      outputs = model(tf.concat([view1, view2], 0), training=True)
      loss = losses.nt_xent_loss(
          outputs[simclr_model.PROJ_HEAD_OUTPUT], 0.5,
          extra_negatives=negatives)[losses.LOSS]
      scaled = loss / self.strategy.num_replicas_in_sync
    variables = model.trainable_variables
    gradients = tape.gradient(scaled, variables)
    self.optimizer.apply_gradients(zip(gradients, variables))
    if self.queue is not None:
      self.queue.enqueue(keys)
      self.momentum.update(model, self.memory_momentum)

  def _step(self, view1, view2):
    self.strategy.run(self._replica_step, args=(view1, view2))

  def run(self, batches):
    for view1, view2 in batches:
      self.step(_distribute(self.strategy, view1),
                _distribute(self.strategy, view2))


def _batches(steps, global_batch=4, seed=5):
  rng = np.random.default_rng(seed)
  return [tuple(rng.uniform(size=(global_batch,) + IMAGE_SHAPE)
                .astype(np.float32) for _ in range(2))
          for _ in range(steps)]


def _weights(model):
  return [v.numpy() for v in model.weights]


def test_train_step_with_empty_queue_equals_plain_step():
  strategy = tf.distribute.get_strategy()
  batches = _batches(1)
  plain = _Run(strategy, memory_size=0)
  memory = _Run(strategy, memory_size=16)
  plain.run(batches)
  memory.run(batches)
  for a, b in zip(_weights(memory.model), _weights(plain.model)):
    np.testing.assert_array_equal(a, b)
  assert int(memory.queue.filled) == 4  # One key per image (view 1).
  # The second step differs: the queue now supplies negatives.
  batches = _batches(1, seed=6)
  plain.run(batches)
  memory.run(batches)
  assert not np.array_equal(memory.model.weights[0], plain.model.weights[0])


def test_kill_and_resume_gives_the_uninterrupted_queue(tmp_path):
  strategy = tf.distribute.get_strategy()
  batches = _batches(4)  # 16 keys through a queue of 6: it wraps.
  uninterrupted = _Run(strategy, memory_size=6)
  uninterrupted.run(batches)

  first = _Run(strategy, memory_size=6)
  first.run(batches[:2])
  path = first.checkpoint().save(str(tmp_path / "ckpt"))
  del first
  resumed = _Run(strategy, memory_size=6, seed=7)  # Other initial weights.
  resumed.checkpoint().restore(path).assert_existing_objects_matched()
  assert int(resumed.queue.filled) == 6 and int(resumed.queue.pointer) == 2
  resumed.run(batches[2:])

  np.testing.assert_array_equal(resumed.queue.keys, uninterrupted.queue.keys)
  assert int(resumed.queue.pointer) == int(uninterrupted.queue.pointer) == 4
  for a, b in zip(_weights(resumed.momentum.model),
                  _weights(uninterrupted.momentum.model)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_weights(resumed.model), _weights(uninterrupted.model)):
    np.testing.assert_array_equal(a, b)


def test_train_steps_two_replicas_match_one_replica(two_cpu_strategy):
  batches = _batches(3)  # 12 keys through a queue of 8.
  single = _Run(tf.distribute.get_strategy(), memory_size=8)
  single.run(batches)
  mirrored = _Run(two_cpu_strategy, memory_size=8)
  mirrored.run(batches)

  assert int(mirrored.queue.pointer.numpy()) == int(single.queue.pointer) == 4
  # Float noise of the reordered reductions (sync BN over 4 images, summed
  # gradients) stays near 1e-5; a wrong replica order would differ by O(1).
  np.testing.assert_allclose(mirrored.queue.ordered_keys(),
                             single.queue.ordered_keys(), atol=1e-4)
  for copy in mirrored.queue.keys.values:
    np.testing.assert_array_equal(copy, mirrored.queue.keys.values[0])
  for a, b in zip(_weights(mirrored.momentum.model),
                  _weights(single.momentum.model)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  for a, b in zip(_weights(mirrored.model), _weights(single.model)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
