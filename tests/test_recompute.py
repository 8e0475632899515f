"""Block-wise activation recomputation (`recompute_block_groups`) changes
memory, not maths: same loss, gradients and moving averages as keeping every
activation, on one device and with batch statistics synchronised across two
replicas."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.models import resnet

_SK_RESNET_D = dict(sk_ratio=0.0625, stem=configs.STEM_CIFAR,
                    shortcut=configs.SHORTCUT_RESNET_D)


def _randomised(model, images):
  model(images, training=False)
  # Random gammas: with the zero-initialised last gamma of every branch most
  # gradients would be exactly zero and compare equal whatever happened.
  for i, variable in enumerate(model.trainable_variables):
    offset = 1.0 if "gamma" in variable.name else 0.0
    variable.assign(offset + 0.2 * tf.random.stateless_normal(
        variable.shape, seed=[i, 7]))
  return model


def _loss(outputs):
  return (tf.reduce_sum(tf.sin(outputs[resnet.FINAL_AVG_POOL])) +
          tf.reduce_mean(outputs["block_group1"] ** 2))


def _one_device_step(depth, recompute, kwargs):
  images = tf.random.stateless_normal([4, 12, 12, 3], seed=[3, 4])
  model = _randomised(resnet.ResNet(depth, 0.125, recompute_block_groups=
                                    recompute, **kwargs), images)
  before = [v.numpy() for v in model.non_trainable_variables]

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = _loss(model(images, training=True))
    return loss, tape.gradient(loss, model.trainable_variables)

  loss, gradients = step()
  after = [v.numpy() for v in model.non_trainable_variables]
  return loss.numpy(), [g.numpy() for g in gradients], before, after


@pytest.mark.parametrize("depth,kwargs", [
    (18, dict(stem=configs.STEM_CIFAR)),
    (50, _SK_RESNET_D),
])
def test_recomputed_blocks_give_the_same_gradients_and_moving_averages(
    depth, kwargs):
  loss, gradients, before, after = _one_device_step(depth, 0, kwargs)
  loss_r, gradients_r, before_r, after_r = _one_device_step(depth, 4, kwargs)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  assert len(gradients_r) == len(gradients)
  assert sum(np.any(g != 0) for g in gradients) == len(gradients)
  for g_r, g in zip(gradients_r, gradients):
    np.testing.assert_allclose(g_r, g, rtol=2e-4, atol=1e-5 * np.abs(g).max())
  # Moving averages moved, and exactly as far as with one forward pass: the
  # backward replay did not update them a second time.
  for b, a, b_r, a_r in zip(before, after, before_r, after_r):
    np.testing.assert_array_equal(b_r, b)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a_r, a, rtol=1e-6, atol=1e-7)


def test_inference_and_frozen_groups_are_not_recomputed():
  images = tf.random.stateless_normal([2, 8, 8, 3], seed=[5, 6])
  model = resnet.ResNet(18, 0.125, stem=configs.STEM_CIFAR,
                        recompute_block_groups=2, frozen_through_block=1)
  plain = resnet.ResNet(18, 0.125, stem=configs.STEM_CIFAR,
                        frozen_through_block=1)
  model(images, training=False)
  plain(images, training=False)
  plain.set_weights(model.get_weights())
  assert [g.recompute_blocks for g in model.block_groups] == [
      True, True, False, False]
  for training in (False, True):
    np.testing.assert_allclose(
        model(images, training=training)[resnet.FINAL_AVG_POOL],
        plain(images, training=training)[resnet.FINAL_AVG_POOL], rtol=1e-5)


def test_recomputation_under_two_replicas_with_synchronised_statistics(
    two_cpu_strategy):
  strategy = two_cpu_strategy
  images = tf.random.stateless_normal([4, 8, 8, 3], seed=[8, 9])
  with strategy.scope():
    models = [_randomised(resnet.ResNet(
        18, 0.125, stem=configs.STEM_CIFAR, global_bn=True,
        recompute_block_groups=recompute), images) for recompute in (0, 4)]
  models[1].set_weights(models[0].get_weights())

  @tf.function
  def step(batch):
    def replica_fn(x):
      results = []
      for model in models:
        with tf.GradientTape() as tape:
          loss = _loss(model(x, training=True))
        results.append(tape.gradient(loss, model.trainable_variables))
      return results
    return strategy.run(replica_fn, args=(batch,))

  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(images))
  plain, recomputed = step(next(iter(dataset)))
  for g, g_r in zip(plain, recomputed):
    for replica_g, replica_g_r in zip(strategy.experimental_local_results(g),
                                      strategy.experimental_local_results(g_r)):
      np.testing.assert_allclose(replica_g_r, replica_g, rtol=2e-4,
                                 atol=1e-5 * np.abs(replica_g).max())
  for v, v_r in zip(models[0].non_trainable_variables,
                    models[1].non_trainable_variables):
    np.testing.assert_allclose(v_r.numpy(), v.numpy(), rtol=1e-6, atol=1e-7)


def test_recompute_argument_is_validated_and_serialised():
  with pytest.raises(ValueError, match="recompute_block_groups"):
    resnet.ResNet(18, recompute_block_groups=5)
  model = resnet.ResNet(18, 0.125, stem=configs.STEM_CIFAR,
                        recompute_block_groups=3, fused_batch_norm=True)
  clone = resnet.ResNet.from_config(model.get_config())
  assert clone.recompute_block_groups == 3 and clone.fused_batch_norm
  assert [g.recompute_blocks for g in clone.block_groups] == [
      True, True, True, False]
  assert keras.layers.deserialize(keras.layers.serialize(
      clone.block_groups[0])).recompute_blocks
