"""Post-activation ResNet backbone of SimCLR / SimCLRv2.

The backbone returns a dict of named intermediate tensors (module constants
below). Everything is static-shape friendly so the train step can be compiled
with XLA.
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.models import layers as layers_lib

INITIAL_CONV = "initial_conv"
INITIAL_MAX_POOL = "initial_max_pool"
BLOCK_GROUP1 = "block_group1"
BLOCK_GROUP2 = "block_group2"
BLOCK_GROUP3 = "block_group3"
BLOCK_GROUP4 = "block_group4"
FINAL_AVG_POOL = "final_avg_pool"
BLOCK_GROUPS = (BLOCK_GROUP1, BLOCK_GROUP2, BLOCK_GROUP3, BLOCK_GROUP4)
OUTPUT_KEYS = (INITIAL_CONV, INITIAL_MAX_POOL) + BLOCK_GROUPS + (
    FINAL_AVG_POOL,)

# depth -> (bottleneck blocks?, blocks per group).
RESNET_SPECS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
}
BOTTLENECK_EXPANSION = 4
_GROUP_BASE_FILTERS = (64, 128, 256, 512)
_GROUP_STRIDES = (1, 2, 2, 2)
_STEM_BASE_FILTERS = 64
_PACKAGE = "tf_simclr"


def scaled_width(channels: int, width_multiplier: float) -> int:
  """Channel count after the width multiplier: max(1, round(channels * w)).

  Integer multipliers give exactly channels * w (the reference); fractional
  ones (e.g. 0.25, 0.5) round to the nearest integer.

  Args:
    channels: channel count at width 1.
    width_multiplier: positive multiplier.

  Returns:
    The scaled channel count.
  """
  return max(1, int(round(channels * width_multiplier)))


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Stem(layers_lib.BatchNormOptionsLayer):
  """Input stem; returns (initial_conv, initial_max_pool).

  * 'cifar': 3x3/1 conv -> BN+ReLU; no pooling.
  * 'imagenet': 7x7/2 conv -> BN+ReLU -> 3x3/2 'same' max pool.
  * 'resnet_d': 3x3/2 conv (filters // 2) -> BN+ReLU -> 3x3/1 conv
    (filters // 2) -> BN+ReLU -> 3x3/1 conv (filters) -> BN+ReLU ->
    3x3/2 'same' max pool.
  `initial_conv` is the last convolution's output before its batch norm.

  Args:
    stem: one of `configs.STEMS`.
    filters: output channels (64 * width).
    **kwargs: batch-norm options (`layers.BatchNormOptionsLayer`) and
      `keras.layers.Layer` arguments.
  """

  def __init__(self, stem: str, filters: int, **kwargs):
    super().__init__(**kwargs)
    _check_choice("stem", stem, configs.STEMS)
    if stem == configs.STEM_RESNET_D and filters < 2:
      raise ValueError(
          f"filters must be >= 2 for the resnet_d stem, got {filters!r}")
    self.stem = stem
    self.filters = filters
    if stem == configs.STEM_CIFAR:
      conv_specs = [(filters, 3, 1)]
    elif stem == configs.STEM_IMAGENET:
      conv_specs = [(filters, 7, 2)]
    else:
      half = filters // 2
      conv_specs = [(half, 3, 2), (half, 3, 1), (filters, 3, 1)]
    self.convs = [
        layers_lib.Conv2dFixedPadding(f, k, s, name=f"conv_{i}")
        for i, (f, k, s) in enumerate(conv_specs)
    ]
    self.bn_relus = [
        layers_lib.BatchNormRelu(name=f"batch_norm_relu_{i}",
                                 **self.bn_kwargs)
        for i in range(len(conv_specs))
    ]

  def call(self, inputs: tf.Tensor, training: Optional[bool] = None
           ) -> tuple[tf.Tensor, tf.Tensor]:
    x = inputs
    initial_conv = None
    for conv, bn_relu in zip(self.convs, self.bn_relus):
      initial_conv = conv(x)
      x = bn_relu(initial_conv, training=training)
    if self.stem != configs.STEM_CIFAR:
      x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    return initial_conv, x

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(stem=self.stem, filters=self.filters)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ProjectionShortcut(layers_lib.BatchNormOptionsLayer):
  """Shortcut of the first block of a group: [pool] -> 1x1 conv -> BN.

  'projection': 1x1 conv with the block stride. 'resnet_d': average pool
  (`layers.ShortcutAvgPool`, including the original code's stride-1 pooling)
  then a stride-1 1x1 conv. The BN has gamma init 1 and no ReLU.

  Args:
    filters: output channels.
    strides: block stride (1 or 2).
    shortcut: one of `configs.SHORTCUTS`.
    **kwargs: batch-norm options (`layers.BatchNormOptionsLayer`) and
      `keras.layers.Layer` arguments.
  """

  def __init__(self,
               filters: int,
               strides: int,
               shortcut: str = configs.SHORTCUT_PROJECTION,
               **kwargs):
    super().__init__(**kwargs)
    _check_choice("shortcut", shortcut, configs.SHORTCUTS)
    self.filters = filters
    self.strides = strides
    self.shortcut = shortcut
    if shortcut == configs.SHORTCUT_RESNET_D:
      self.pool = layers_lib.ShortcutAvgPool(strides, name="avg_pool")
      conv_strides = 1
    else:
      self.pool = None
      conv_strides = strides
    self.conv = layers_lib.Conv2dFixedPadding(filters, 1, conv_strides,
                                              name="conv")
    self.bn = layers_lib.BatchNormRelu(relu=False, name="batch_norm",
                                       **self.bn_kwargs)

  def call(self, inputs: tf.Tensor, training: Optional[bool] = None
           ) -> tf.Tensor:
    x = inputs if self.pool is None else self.pool(inputs)
    return self.bn(self.conv(x), training=training)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(filters=self.filters, strides=self.strides,
                  shortcut=self.shortcut)
    return config


class ResidualBlock(layers_lib.BatchNormOptionsLayer):
  """What both block types share: output = ReLU([SE](branch) + shortcut).

  The constructor makes the projection shortcut (attribute `projection`,
  None for the identity) for `EXPANSION * filters` output channels; a
  subclass then makes its branch layers and calls `_finish_branch()`, which
  adds the optional squeeze-excitation last. Attribute names and creation
  order (shortcut, branch, SE) are what checkpoints, the weight order and the
  original-code importer rely on.

  Args:
    filters: base filters of the block.
    strides: stride of the block's spatial convolution.
    use_projection: use a `ProjectionShortcut` instead of the identity.
    se_ratio: squeeze-excitation ratio (0 disables it).
    shortcut: projection shortcut style, one of `configs.SHORTCUTS`.
    **kwargs: batch-norm options (`layers.BatchNormOptionsLayer`) and
      `keras.layers.Layer` arguments.
  """

  # Output channels per base filter.
  EXPANSION = 1

  def __init__(self,
               filters: int,
               strides: int = 1,
               use_projection: bool = False,
               se_ratio: float = 0.0,
               shortcut: str = configs.SHORTCUT_PROJECTION,
               **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    self.use_projection = use_projection
    self.se_ratio = se_ratio
    self.shortcut = shortcut
    self.out_filters = self.EXPANSION * filters
    self.projection = (
        ProjectionShortcut(self.out_filters, strides, shortcut,
                           name="shortcut", **self.bn_kwargs)
        if use_projection else None)

  def _finish_branch(self) -> None:
    self.squeeze_excitation = (
        layers_lib.SqueezeExcitation(self.filters, self.se_ratio,
                                     name="squeeze_excitation")
        if self.se_ratio > 0 else None)

  def _branch(self, inputs: tf.Tensor, training: Optional[bool]
              ) -> tf.Tensor:
    raise NotImplementedError

  def call(self, inputs: tf.Tensor, training: Optional[bool] = None
           ) -> tf.Tensor:
    shortcut = (inputs if self.projection is None
                else self.projection(inputs, training=training))
    x = self._branch(inputs, training)
    if self.squeeze_excitation is not None:
      x = self.squeeze_excitation(x)
    return tf.nn.relu(x + shortcut)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(filters=self.filters, strides=self.strides,
                  use_projection=self.use_projection, se_ratio=self.se_ratio,
                  shortcut=self.shortcut)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BasicBlock(ResidualBlock):
  """ResNet-18/34 block: 3x3/s -> BN+ReLU -> 3x3 -> BN(gamma 0) [-> SE].

  Output = ReLU(branch + shortcut). Never uses selective kernels.

  Args:
    *args: `ResidualBlock`'s arguments (filters, strides, use_projection,
      se_ratio, shortcut); `filters` is also the output channel count.
    **kwargs: the same by name, batch-norm options and `keras.layers.Layer`
      arguments.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    filters = self.filters
    self.conv_1 = layers_lib.Conv2dFixedPadding(filters, 3, self.strides,
                                                name="conv_1")
    self.bn_relu_1 = layers_lib.BatchNormRelu(name="batch_norm_relu_1",
                                              **self.bn_kwargs)
    self.conv_2 = layers_lib.Conv2dFixedPadding(filters, 3, 1, name="conv_2")
    self.bn_2 = layers_lib.BatchNormRelu(relu=False, init_zero=True,
                                         name="batch_norm_2",
                                         **self.bn_kwargs)
    self._finish_branch()

  def _branch(self, inputs: tf.Tensor, training: Optional[bool]
              ) -> tf.Tensor:
    x = self.bn_relu_1(self.conv_1(inputs), training=training)
    return self.bn_2(self.conv_2(x), training=training)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BottleneckBlock(ResidualBlock):
  """ResNet-50+ block with 4x expansion and the stride on the 3x3.

  1x1 (filters) -> BN+ReLU -> 3x3/s conv + BN+ReLU, or a `SelectiveKernel`
  when sk_ratio > 0 -> 1x1 (4 * filters) -> BN(gamma 0) [-> SE];
  output = ReLU(branch + shortcut).

  Args:
    filters: base filters; the block outputs 4 * filters channels.
    strides: stride of the spatial convolution.
    use_projection: use a `ProjectionShortcut` instead of the identity.
    sk_ratio: selective-kernel ratio (0 uses a plain 3x3 convolution).
    se_ratio: squeeze-excitation ratio (0 disables it).
    shortcut: projection shortcut style, one of `configs.SHORTCUTS`.
    **kwargs: batch-norm options (`layers.BatchNormOptionsLayer`) and
      `keras.layers.Layer` arguments.
  """

  EXPANSION = BOTTLENECK_EXPANSION

  def __init__(self,
               filters: int,
               strides: int = 1,
               use_projection: bool = False,
               sk_ratio: float = 0.0,
               se_ratio: float = 0.0,
               shortcut: str = configs.SHORTCUT_PROJECTION,
               **kwargs):
    super().__init__(filters, strides, use_projection, se_ratio, shortcut,
                     **kwargs)
    self.sk_ratio = sk_ratio
    bn = self.bn_kwargs
    self.conv_1 = layers_lib.Conv2dFixedPadding(filters, 1, 1, name="conv_1")
    self.bn_relu_1 = layers_lib.BatchNormRelu(name="batch_norm_relu_1", **bn)
    if sk_ratio > 0:
      self.selective_kernel = layers_lib.SelectiveKernel(
          filters, sk_ratio, self.strides, name="selective_kernel", **bn)
      self.conv_2 = None
      self.bn_relu_2 = None
    else:
      self.selective_kernel = None
      self.conv_2 = layers_lib.Conv2dFixedPadding(filters, 3, self.strides,
                                                  name="conv_2")
      self.bn_relu_2 = layers_lib.BatchNormRelu(name="batch_norm_relu_2",
                                                **bn)
    self.conv_3 = layers_lib.Conv2dFixedPadding(self.out_filters, 1, 1,
                                                name="conv_3")
    self.bn_3 = layers_lib.BatchNormRelu(relu=False, init_zero=True,
                                         name="batch_norm_3", **bn)
    self._finish_branch()

  def _branch(self, inputs: tf.Tensor, training: Optional[bool]
              ) -> tf.Tensor:
    x = self.bn_relu_1(self.conv_1(inputs), training=training)
    if self.selective_kernel is not None:
      x = self.selective_kernel(x, training=training)
    else:
      x = self.bn_relu_2(self.conv_2(x), training=training)
    return self.bn_3(self.conv_3(x), training=training)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(sk_ratio=self.sk_ratio)
    return config


def recomputed_call(block: keras.layers.Layer, inputs: tf.Tensor
                    ) -> tf.Tensor:
  """`block(inputs, training=True)` keeping only `inputs` for the backward.

  The block's inner activations are dropped after the forward pass and
  recomputed when the gradient is taken, trading one more forward pass of the
  block for most of its activation memory. The replay normalises with the same
  batch statistics (so gradients are those of the plain call) but does not
  update the batch norms' moving averages a second time.

  Args:
    block: a training-mode Keras layer of one tensor.
    inputs: its input.

  Returns:
    The block's output.
  """
  calls = []

  def forward(x: tf.Tensor) -> tf.Tensor:
    if calls:  # Every call after the first is the backward pass's replay.
      with layers_lib.moving_averages_frozen():
        return block(x, training=True)
    calls.append(True)
    return block(x, training=True)

  return tf.recompute_grad(forward)(inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BlockGroup(layers_lib.BatchNormOptionsLayer):
  """A stage of blocks; the first has the stride and a projection shortcut.

  Every group's first block gets a projection shortcut, also in group 1 where
  shapes would allow the identity (as in the original code; its weights
  include it).

  Args:
    filters: base filters of every block.
    num_blocks: number of blocks.
    strides: stride of the first block.
    bottleneck: use `BottleneckBlock` (else `BasicBlock`).
    sk_ratio: selective-kernel ratio (bottleneck only; 0 disables it).
    se_ratio: squeeze-excitation ratio (0 disables it).
    shortcut: projection shortcut style, one of `configs.SHORTCUTS`.
    recompute_blocks: in training, keep only each block's input for the
      backward pass and recompute the rest there (`recomputed_call`).
    **kwargs: batch-norm options (`layers.BatchNormOptionsLayer`) and
      `keras.layers.Layer` arguments.
  """

  def __init__(self,
               filters: int,
               num_blocks: int,
               strides: int,
               bottleneck: bool,
               sk_ratio: float = 0.0,
               se_ratio: float = 0.0,
               shortcut: str = configs.SHORTCUT_PROJECTION,
               recompute_blocks: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.num_blocks = num_blocks
    self.strides = strides
    self.bottleneck = bottleneck
    self.sk_ratio = sk_ratio
    self.se_ratio = se_ratio
    self.shortcut = shortcut
    self.recompute_blocks = recompute_blocks
    self.blocks = []
    for i in range(num_blocks):
      common = dict(filters=filters, strides=strides if i == 0 else 1,
                    use_projection=i == 0, se_ratio=se_ratio,
                    shortcut=shortcut, name=f"block_{i}", **self.bn_kwargs)
      if bottleneck:
        self.blocks.append(BottleneckBlock(sk_ratio=sk_ratio, **common))
      else:
        self.blocks.append(BasicBlock(**common))

  def call(self, inputs: tf.Tensor, training: Optional[bool] = None
           ) -> tf.Tensor:
    x = inputs
    recompute = (self.recompute_blocks and training is True and
                 self.trainable)
    for block in self.blocks:
      x = (recomputed_call(block, x) if recompute
           else block(x, training=training))
    return x

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(filters=self.filters, num_blocks=self.num_blocks,
                  strides=self.strides, bottleneck=self.bottleneck,
                  sk_ratio=self.sk_ratio, se_ratio=self.se_ratio,
                  shortcut=self.shortcut,
                  recompute_blocks=self.recompute_blocks)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResNet(keras.Model):
  """SimCLR ResNet backbone returning named intermediate tensors.

  `call(images, training)` maps float images [N, H, W, 3] to a dict with keys
  `OUTPUT_KEYS`: initial_conv (pre-BN stem conv), initial_max_pool (stem
  output), block_group1..4 and final_avg_pool ([N, C], spatial mean).

  Channel counts are max(1, round(c * width_multiplier)) for every base count
  c (stem 64, groups 64/128/256/512); the ResNet-D stem's first two convs use
  half the stem width (integer division); selective-kernel and
  squeeze-excitation widths derive from the already scaled group filters
  (max(int(f * sk_ratio), 32) and max(1, int(f * se_ratio))). Integer
  multipliers reproduce the reference exactly.

  Freezing (`fine_tune_after_block` of the reference): parts up to and
  including `frozen_through_block` are non-trainable, their batch norms always
  run in inference mode (a deliberate difference from the original code,
  where frozen BN kept using batch statistics and updating moving averages),
  and a stop-gradient is placed on the last frozen part's output.

  Args:
    depth: one of `RESNET_SPECS` (18, 34, 50, 101, 152, 200).
    width_multiplier: positive channel multiplier.
    sk_ratio: selective-kernel ratio (0 disables; used by bottlenecks only).
    se_ratio: squeeze-excitation ratio (0 disables).
    stem: one of `configs.STEMS`; see `configs.reference_stem`.
    shortcut: one of `configs.SHORTCUTS`; see `configs.reference_shortcut`.
    global_bn: synchronise batch statistics across replicas.
    batch_norm_decay: BN moving-average momentum.
    batch_norm_epsilon: BN variance epsilon.
    fused_batch_norm: training-mode batch norms through the fused kernel
      (same maths; `layers.BatchNormalization`). Faster for R50 and narrow
      networks on CPU (bench/RESULTS.md).
    recompute_block_groups: 0 keeps every activation for the backward pass;
      k recomputes, block by block, the activations of block groups 1..k
      in the backward pass instead (same gradients and moving averages;
      about a third more forward compute in those groups for a large cut in
      peak memory, most of it in the early, high-resolution groups).
    frozen_through_block: -1 freezes nothing, 0 the stem, k in 1..4 the stem
      and block groups 1..k.
    **kwargs: forwarded to `keras.Model`.
  """

  def __init__(self,
               depth: int,
               width_multiplier: float = 1.0,
               sk_ratio: float = 0.0,
               se_ratio: float = 0.0,
               stem: str = configs.STEM_IMAGENET,
               shortcut: str = configs.SHORTCUT_PROJECTION,
               global_bn: bool = False,
               batch_norm_decay: float = 0.9,
               batch_norm_epsilon: float = 1e-5,
               fused_batch_norm: bool = False,
               recompute_block_groups: int = 0,
               frozen_through_block: int = -1,
               **kwargs):
    kwargs.setdefault("name", "resnet")
    super().__init__(**kwargs)
    _check_choice("depth", depth, tuple(RESNET_SPECS))
    if isinstance(width_multiplier, bool) or not (
        isinstance(width_multiplier, (int, float)) and width_multiplier > 0):
      raise ValueError(
          f"width_multiplier must be a positive number, got "
          f"{width_multiplier!r}")
    if not (isinstance(sk_ratio, (int, float)) and sk_ratio >= 0):
      raise ValueError(f"sk_ratio must be >= 0, got {sk_ratio!r}")
    if not (isinstance(se_ratio, (int, float)) and se_ratio >= 0):
      raise ValueError(f"se_ratio must be >= 0, got {se_ratio!r}")
    _check_choice("stem", stem, configs.STEMS)
    _check_choice("shortcut", shortcut, configs.SHORTCUTS)
    layers_lib.check_bn_args(batch_norm_decay, batch_norm_epsilon)
    _check_choice("frozen_through_block", frozen_through_block,
                  (-1, 0, 1, 2, 3, 4))
    _check_choice("recompute_block_groups", recompute_block_groups,
                  (0, 1, 2, 3, 4))
    self.depth = depth
    self.width_multiplier = width_multiplier
    self.sk_ratio = sk_ratio
    self.se_ratio = se_ratio
    self.stem = stem
    self.shortcut = shortcut
    self.global_bn = global_bn
    self.batch_norm_decay = batch_norm_decay
    self.batch_norm_epsilon = batch_norm_epsilon
    self.fused_batch_norm = fused_batch_norm
    self.recompute_block_groups = recompute_block_groups
    self.frozen_through_block = frozen_through_block

    bottleneck, blocks_per_group = RESNET_SPECS[depth]
    bn = layers_lib.bn_options(self)
    self.stem_layer = Stem(
        stem, scaled_width(_STEM_BASE_FILTERS, width_multiplier),
        name="stem", **bn)
    self.block_groups = [
        BlockGroup(scaled_width(base, width_multiplier), num_blocks, strides,
                   bottleneck, sk_ratio=sk_ratio, se_ratio=se_ratio,
                   shortcut=shortcut,
                   recompute_blocks=index <= recompute_block_groups,
                   name=name, **bn)
        for index, (base, num_blocks, strides, name) in enumerate(zip(
            _GROUP_BASE_FILTERS, blocks_per_group, _GROUP_STRIDES,
            BLOCK_GROUPS), start=1)
    ]
    for part in self.parts[:frozen_through_block + 1]:
      part.trainable = False

  @property
  def parts(self) -> list[keras.layers.Layer]:
    """Stem then block groups 1..4, indexed like `frozen_through_block`."""
    return [self.stem_layer] + list(self.block_groups)

  @property
  def output_channels(self) -> int:
    """Channels of block_group4 / final_avg_pool."""
    bottleneck, _ = RESNET_SPECS[self.depth]
    filters = scaled_width(_GROUP_BASE_FILTERS[-1], self.width_multiplier)
    return BOTTLENECK_EXPANSION * filters if bottleneck else filters

  def call(self, images: tf.Tensor, training: Optional[bool] = None
           ) -> dict[str, tf.Tensor]:
    frozen = self.frozen_through_block
    outputs = {}
    initial_conv, x = self.stem_layer(
        images, training=False if frozen >= 0 else training)
    if frozen == 0:
      x = tf.stop_gradient(x)
    outputs[INITIAL_CONV] = initial_conv
    outputs[INITIAL_MAX_POOL] = x
    for index, (name, group) in enumerate(
        zip(BLOCK_GROUPS, self.block_groups), start=1):
      x = group(x, training=False if index <= frozen else training)
      if index == frozen:
        x = tf.stop_gradient(x)
      outputs[name] = x
    outputs[FINAL_AVG_POOL] = tf.reduce_mean(x, axis=[1, 2])
    return outputs

  def get_config(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "trainable": self.trainable,
        "depth": self.depth,
        "width_multiplier": self.width_multiplier,
        "sk_ratio": self.sk_ratio,
        "se_ratio": self.se_ratio,
        "stem": self.stem,
        "shortcut": self.shortcut,
        "global_bn": self.global_bn,
        "batch_norm_decay": self.batch_norm_decay,
        "batch_norm_epsilon": self.batch_norm_epsilon,
        "fused_batch_norm": self.fused_batch_norm,
        "recompute_block_groups": self.recompute_block_groups,
        "frozen_through_block": self.frozen_through_block,
    }

  @classmethod
  def from_config(cls, config: dict[str, Any], custom_objects=None
                  ) -> "ResNet":
    del custom_objects  # No nested objects.
    return cls(**config)
