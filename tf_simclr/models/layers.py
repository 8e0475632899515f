"""Building blocks of the ResNet backbone and the heads.

All convolutions are bias-free (except inside squeeze-excitation) and use the
fan-in truncated-normal `VarianceScaling` initializer; all batch norms are plain
`keras.layers.BatchNormalization` layers named `batch_normalization`, so that
the optimiser's name-based exclusion rules select them by role.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

import tensorflow as tf
import tf_keras as keras

_PACKAGE = "tf_simclr"
# Narrowest SK attention bottleneck, as in the reference.
SK_MIN_DIM = 32

_moving_average_state = threading.local()


@contextlib.contextmanager
def moving_averages_frozen() -> Iterator[None]:
  """Batch norms called inside this context leave their moving averages alone.

  For replaying a forward pass (activation recomputation in the backward
  pass): the replay must normalise with the same batch statistics, but the
  moving averages were already updated once by the original forward pass.
  The flag is read when a layer is called (trace time inside `tf.function`).
  """
  previous = getattr(_moving_average_state, "frozen", False)
  _moving_average_state.frozen = True
  try:
    yield
  finally:
    _moving_average_state.frozen = previous


def conv_kernel_initializer() -> keras.initializers.Initializer:
  """Scale 1.0, fan-in, truncated normal: the reference's (non-He) choice."""
  return keras.initializers.VarianceScaling(
      scale=1.0, mode="fan_in", distribution="truncated_normal")


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_bn_args(batch_norm_decay: float, batch_norm_epsilon: float) -> None:
  """Raises ValueError unless decay is in [0, 1] and epsilon is positive."""
  if not 0.0 <= batch_norm_decay <= 1.0:
    raise ValueError(
        f"batch_norm_decay must be in [0, 1], got {batch_norm_decay!r}")
  if not batch_norm_epsilon > 0.0:
    raise ValueError(
        f"batch_norm_epsilon must be > 0, got {batch_norm_epsilon!r}")


def fixed_padding(inputs: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """Zero-pads H and W by kernel_size-1 in total, independently of input size.

  Args:
    inputs: [N, H, W, C] tensor.
    kernel_size: size of the convolution kernel that follows.

  Returns:
    The padded tensor ((k-1)//2 before, the rest after, on H and W).
  """
  pad_total = kernel_size - 1
  pad_before = pad_total // 2
  pad_after = pad_total - pad_before
  return tf.pad(inputs, [[0, 0], [pad_before, pad_after],
                         [pad_before, pad_after], [0, 0]])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2dFixedPadding(keras.layers.Layer):
  """Bias-free convolution; strided convolutions pad explicitly.

  Stride 1 uses symmetric 'same' padding. Stride > 1 pads (k-1)//2 before and
  the rest after, then runs a 'valid' convolution, which differs from TF 'same'
  on even inputs and is what the reference weights were trained with.

  Args:
    filters: number of output channels.
    kernel_size: square kernel size.
    strides: square stride.
    **kwargs: forwarded to `keras.layers.Layer`.
  """

  def __init__(self, filters: int, kernel_size: int, strides: int = 1,
               **kwargs):
    super().__init__(**kwargs)
    _check_positive_int("filters", filters)
    _check_positive_int("kernel_size", kernel_size)
    _check_positive_int("strides", strides)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.conv = keras.layers.Conv2D(
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding="same" if strides == 1 else "valid",
        use_bias=False,
        kernel_initializer=conv_kernel_initializer(),
        name="conv2d")

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    if self.strides > 1:
      inputs = fixed_padding(inputs, self.kernel_size)
    return self.conv(inputs)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size,
                  strides=self.strides)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
  """Keras batch norm that can run its training-mode 4-D path fused.

  With `fused_training` the maths stays the unfused layer's (biased batch
  variance for normalising and for the moving average, epsilon exactly as
  given); only the kernel differs. Keras' own `fused=True` is not used
  because it raises epsilon to 1.001e-5 and its moving variance goes through
  a Bessel add/remove round trip that shifts it by ~1e-4 relative.

  Experiments turn it on (`ModelConfig.fused_batch_norm`): the unfused graph
  (the original code's) spends about a fifth of a CPU training step on the
  element-wise passes of its mean, variance and normalisation and their
  gradients, which the fused kernel does in one pass each way
  (bench/RESULTS.md). The layer's own default stays off so that a bare layer
  builds the original graph.

  Synchronised (cross-replica) statistics, other ranks, inference and
  symbolic `training` values take the unfused Keras path.

  Args:
    fused_training: run training-mode 4-D inputs through the fused kernel.
    **kwargs: forwarded to `keras.layers.BatchNormalization` (`fused` is
      always False there: this layer picks the kernel itself).
  """

  def __init__(self, fused_training: bool = False, **kwargs):
    kwargs["fused"] = False
    super().__init__(**kwargs)
    self.fused_training = fused_training

  def _assign_moving_average(self, variable, value, momentum, inputs_size):
    if getattr(_moving_average_state, "frozen", False):
      return variable
    return super()._assign_moving_average(variable, value, momentum,
                                          inputs_size)

  def _takes_fused_path(self, inputs: tf.Tensor, training) -> bool:
    return (self.fused_training and not self.synchronized and
            not self.renorm and self.virtual_batch_size is None and
            self.axis == [3] and inputs.shape.rank == 4 and
            isinstance(training, bool) and training)

  def call(self, inputs: tf.Tensor, training=None, mask=None) -> tf.Tensor:
    training_value = self._get_training_value(training)
    if mask is not None or not self._takes_fused_path(inputs, training_value):
      return super().call(inputs, training=training, mask=mask)
    inputs = tf.cast(inputs, self.compute_dtype)
    channels = inputs.shape[-1]
    offset = (self.beta if self.center else
              tf.zeros([channels], self.gamma.dtype))
    scale = (self.gamma if self.scale else
             tf.ones([channels], offset.dtype))
    empty = tf.constant([], tf.float32)
    outputs, mean, corrected_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=scale, offset=offset, mean=empty, variance=empty,
        epsilon=self.epsilon, exponential_avg_factor=1.0,
        data_format="NHWC", is_training=True)
    # The kernel reports n/(n-1) times the variance it normalised with.
    count = tf.cast(tf.size(inputs) // channels, tf.float32)
    variance = corrected_variance * ((count - 1.0) / tf.maximum(count, 1.0))
    self._assign_moving_average(self.moving_mean, mean, self.momentum, None)
    self._assign_moving_average(self.moving_variance, variance, self.momentum,
                                None)
    return outputs

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.pop("fused", None)
    config.update(fused_training=self.fused_training)
    return config


def bn_options(layer: Any) -> dict[str, Any]:
  """The batch-norm options a layer or model holds, as keyword arguments."""
  return dict(global_bn=layer.global_bn,
              batch_norm_decay=layer.batch_norm_decay,
              batch_norm_epsilon=layer.batch_norm_epsilon,
              fused_batch_norm=layer.fused_batch_norm)


class BatchNormOptionsLayer(keras.layers.Layer):
  """Base of layers that pass the same batch-norm options to every BN inside.

  Holds, validates and serialises the four options, so that each backbone or
  head layer forwards them through `bn_kwargs` instead of repeating them.

  Args:
    global_bn: synchronise batch statistics across replicas.
    batch_norm_decay: moving-average momentum.
    batch_norm_epsilon: variance epsilon.
    fused_batch_norm: run training-mode 4-D batch norms through the fused
      kernel when statistics are not synchronised (same maths; see
      `BatchNormalization`).
    **kwargs: forwarded to `keras.layers.Layer`.
  """

  def __init__(self,
               global_bn: bool = False,
               batch_norm_decay: float = 0.9,
               batch_norm_epsilon: float = 1e-5,
               fused_batch_norm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    check_bn_args(batch_norm_decay, batch_norm_epsilon)
    self.global_bn = global_bn
    self.batch_norm_decay = batch_norm_decay
    self.batch_norm_epsilon = batch_norm_epsilon
    self.fused_batch_norm = fused_batch_norm

  @property
  def bn_kwargs(self) -> dict[str, Any]:
    """The options as keyword arguments of a nested `BatchNormOptionsLayer`."""
    return bn_options(self)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(self.bn_kwargs)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNormRelu(BatchNormOptionsLayer):
  """Batch norm (eps/momentum from arguments), optionally followed by ReLU.

  Args:
    relu: apply a ReLU after the normalisation.
    init_zero: initialise gamma to 0 (last BN of a residual branch).
    center: learn a beta offset.
    **kwargs: batch-norm options (`BatchNormOptionsLayer`) and
      `keras.layers.Layer` arguments.
  """

  def __init__(self,
               relu: bool = True,
               init_zero: bool = False,
               center: bool = True,
               **kwargs):
    super().__init__(**kwargs)
    self.relu = relu
    self.init_zero = init_zero
    self.center = center
    self.bn = BatchNormalization(
        axis=-1,
        momentum=self.batch_norm_decay,
        epsilon=self.batch_norm_epsilon,
        center=center,
        scale=True,
        gamma_initializer="zeros" if init_zero else "ones",
        synchronized=self.global_bn,
        fused_training=self.fused_batch_norm,
        name="batch_normalization")

  def call(self, inputs: tf.Tensor, training: Optional[bool] = None
           ) -> tf.Tensor:
    outputs = self.bn(inputs, training=training)
    if self.relu:
      outputs = tf.nn.relu(outputs)
    return outputs

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(relu=self.relu, init_zero=self.init_zero, center=self.center)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelectiveKernel(BatchNormOptionsLayer):
  """Selective-kernel convolution of the SimCLRv2 backbone.

  A single 3x3 convolution produces 2*filters channels whose two contiguous
  halves act as the two branches; a squeeze path computes a per-channel
  softmax over the branches that mixes them.

  Args:
    filters: output channels (and width of each branch).
    sk_ratio: attention bottleneck ratio; its width is
      max(int(filters * sk_ratio), 32).
    strides: stride of the 3x3 convolution.
    **kwargs: batch-norm options (`BatchNormOptionsLayer`) and
      `keras.layers.Layer` arguments.
  """

  def __init__(self, filters: int, sk_ratio: float, strides: int = 1,
               **kwargs):
    super().__init__(**kwargs)
    _check_positive_int("filters", filters)
    if not sk_ratio > 0:
      raise ValueError(f"sk_ratio must be > 0, got {sk_ratio!r}")
    self.filters = filters
    self.sk_ratio = sk_ratio
    self.strides = strides
    self.mid_dim = max(int(filters * sk_ratio), SK_MIN_DIM)
    self.conv = Conv2dFixedPadding(2 * filters, 3, strides, name="conv")
    self.bn_relu = BatchNormRelu(name="batch_norm_relu", **self.bn_kwargs)
    self.reduce_conv = keras.layers.Conv2D(
        self.mid_dim, 1, use_bias=False,
        kernel_initializer=conv_kernel_initializer(), name="reduce_conv")
    self.reduce_bn_relu = BatchNormRelu(name="reduce_batch_norm_relu",
                                        **self.bn_kwargs)
    self.expand_conv = keras.layers.Conv2D(
        2 * filters, 1, use_bias=False,
        kernel_initializer=conv_kernel_initializer(), name="expand_conv")

  def call(self, inputs: tf.Tensor, training: Optional[bool] = None
           ) -> tf.Tensor:
    features = self.bn_relu(self.conv(inputs), training=training)
    branch_a, branch_b = tf.split(features, 2, axis=-1)
    descriptor = tf.reduce_mean(branch_a + branch_b, axis=[1, 2],
                                keepdims=True)
    attention = self.reduce_bn_relu(self.reduce_conv(descriptor),
                                    training=training)
    logits_a, logits_b = tf.split(self.expand_conv(attention), 2, axis=-1)
    weights = tf.nn.softmax(tf.stack([logits_a, logits_b], axis=0), axis=0)
    return weights[0] * branch_a + weights[1] * branch_b

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(filters=self.filters, sk_ratio=self.sk_ratio,
                  strides=self.strides)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SqueezeExcitation(keras.layers.Layer):
  """Channel gating by squeeze-excitation.

  The bottleneck width comes from the block's base filters, not from the
  (possibly 4x wider) tensor being gated; the expansion restores the input's
  channel count, read at build time.

  Args:
    filters: the block's base filters.
    se_ratio: bottleneck ratio; width is max(1, int(filters * se_ratio)).
    **kwargs: forwarded to `keras.layers.Layer`.
  """

  def __init__(self, filters: int, se_ratio: float, **kwargs):
    super().__init__(**kwargs)
    _check_positive_int("filters", filters)
    if not se_ratio > 0:
      raise ValueError(f"se_ratio must be > 0, got {se_ratio!r}")
    self.filters = filters
    self.se_ratio = se_ratio
    self.reduce_conv = keras.layers.Conv2D(
        max(1, int(filters * se_ratio)), 1, use_bias=True,
        kernel_initializer=conv_kernel_initializer(), name="reduce_conv")
    self.expand_conv = None

  def build(self, input_shape: tf.TensorShape) -> None:
    self.expand_conv = keras.layers.Conv2D(
        int(input_shape[-1]), 1, use_bias=True,
        kernel_initializer=conv_kernel_initializer(), name="expand_conv")
    super().build(input_shape)

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    squeezed = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
    gate = tf.sigmoid(self.expand_conv(tf.nn.relu(self.reduce_conv(squeezed))))
    return inputs * gate

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(filters=self.filters, se_ratio=self.se_ratio)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ShortcutAvgPool(keras.layers.Layer):
  """The average pool of the ResNet-D shortcut.

  Stride 2: zero-pad one row/column after, then a 2x2/2 'valid' pool (padded
  zeros count in the mean). Stride 1 (the original code's, kept because
  released weights depend on it): a 2x2/1 'same' pool, i.e. a box filter over
  (i..i+1, j..j+1) whose last row/column average only the in-bounds cells.

  Args:
    strides: 1 or 2.
    **kwargs: forwarded to `keras.layers.Layer`.
  """

  def __init__(self, strides: int, **kwargs):
    super().__init__(**kwargs)
    if strides not in (1, 2):
      raise ValueError(f"strides must be 1 or 2, got {strides!r}")
    self.strides = strides

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    if self.strides == 1:
      # TF's 'same' average pool excludes padding from the count.
      return tf.nn.avg_pool2d(inputs, 2, 1, "SAME")
    padded = tf.pad(inputs, [[0, 0], [0, 1], [0, 1], [0, 0]])
    return tf.nn.avg_pool2d(padded, 2, 2, "VALID")

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(strides=self.strides)
    return config
