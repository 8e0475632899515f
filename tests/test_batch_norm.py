"""The fused training path of `layers.BatchNormalization` keeps the maths of
the unfused Keras layer: outputs, gradients and moving statistics."""

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.models import layers


def _run(fused_training, inputs, center=True, steps=3):
  bn = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, center=center,
                                 fused_training=fused_training)
  bn.build(inputs.shape)
  channels = inputs.shape[-1]
  bn.gamma.assign(tf.linspace(0.5, 1.5, channels))
  if center:
    bn.beta.assign(tf.linspace(-1.0, 1.0, channels))

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      outputs = bn(inputs, training=True)
      loss = tf.reduce_sum(tf.sin(outputs) * tf.range(
          outputs.shape[-1], dtype=outputs.dtype))
    return outputs, tape.gradient(loss, [inputs] + bn.trainable_variables)

  for _ in range(steps):
    outputs, gradients = step()
  return ([outputs.numpy()] + [g.numpy() for g in gradients] +
          [bn.moving_mean.numpy(), bn.moving_variance.numpy()])


@pytest.mark.parametrize("center", [True, False])
def test_fused_training_matches_unfused_keras_maths(center):
  inputs = tf.constant(
      np.random.RandomState(0).randn(32, 5, 5, 6).astype(np.float32) * 3 + 1)
  unfused = _run(False, inputs, center)
  fused = _run(True, inputs, center)
  names = ["outputs", "d_inputs", "d_gamma", "d_beta", "moving_mean",
           "moving_variance"]
  if not center:
    names.remove("d_beta")
  for name, expected, actual in zip(names, unfused, fused):
    # Parameter gradients are sums over 800 positions: compare them at the
    # scale of their largest entry, not entry by entry.
    np.testing.assert_allclose(actual, expected, rtol=2e-5,
                               atol=2e-5 * max(1.0, np.abs(expected).max()),
                               err_msg=name)
  # The moving variance uses the biased batch variance (the kernel's own
  # output is Bessel-corrected: n/(n-1) = 800/799 would show here).
  batch_variance = inputs.numpy().reshape(-1, 6).var(0)
  expected_moving = 0.9**3 + (1 - 0.9**3) * batch_variance
  np.testing.assert_allclose(fused[-1], expected_moving, rtol=1e-6)


def test_fused_path_is_only_taken_for_unsynchronised_4d_training():
  assert not layers.BatchNormalization().fused_training  # Off by default.
  bn = layers.BatchNormalization(fused_training=True)
  four_d = tf.zeros([2, 3, 3, 4])
  bn.build(four_d.shape)
  assert bn._takes_fused_path(four_d, True)
  assert not bn._takes_fused_path(four_d, False)
  assert not bn._takes_fused_path(tf.zeros([2, 4]), True)
  synced = layers.BatchNormalization(synchronized=True, fused_training=True)
  synced.build(four_d.shape)
  assert not synced._takes_fused_path(four_d, True)
  off = layers.BatchNormalization(fused_training=False)
  off.build(four_d.shape)
  assert not off._takes_fused_path(four_d, True)


def test_frozen_layer_stays_in_inference_mode():
  bn = layers.BatchNormalization(epsilon=1e-5)
  inputs = tf.random.stateless_normal([4, 3, 3, 2], seed=[1, 2]) + 5.0
  bn.build(inputs.shape)
  bn.trainable = False
  outputs = bn(inputs, training=True)
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.0)
  np.testing.assert_allclose(outputs.numpy(), inputs.numpy() / np.sqrt(
      1 + 1e-5), rtol=1e-6)


def test_bfloat16_inputs_keep_float32_statistics():
  bn = layers.BatchNormalization(dtype="mixed_bfloat16", fused_training=True)
  inputs = tf.cast(tf.random.stateless_normal([8, 4, 4, 3], seed=[3, 4]),
                   tf.bfloat16)
  outputs = bn(inputs, training=True)
  assert outputs.dtype == tf.bfloat16
  assert bn.moving_variance.dtype == tf.float32
  assert np.all(np.isfinite(bn.moving_variance.numpy()))
