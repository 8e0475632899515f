"""Tests for tf_simclr.models: backbone, heads, model and builder."""

import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.models import builder
from tf_simclr.models import heads
from tf_simclr.models import layers
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model

RESNET_D = dict(stem=configs.STEM_RESNET_D,
                shortcut=configs.SHORTCUT_RESNET_D)
EPS = 1e-5


# ---------------------------------------------------------------- helpers ---


def _count_trainable(model):
  return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def _randomize(layer, seed=0):
  """Gives every weight a random value (positive moving variances)."""
  rng = np.random.default_rng(seed)
  for variable in layer.weights:
    if "moving_variance" in variable.name:
      values = rng.uniform(0.5, 1.5, size=variable.shape)
    else:
      values = rng.normal(scale=0.5, size=variable.shape)
    variable.assign(values.astype(np.float32))


def _np_conv(x, kernel, stride, pad_h, pad_w):
  """Reference NHWC convolution with explicit (before, after) padding."""
  x = np.pad(x.astype(np.float64), ((0, 0), pad_h, pad_w, (0, 0)))
  kh, kw, _, cout = kernel.shape
  n, h, w, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
  out = np.zeros((n, oh, ow, cout))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (oh - 1) + 1:stride,
                j:j + stride * (ow - 1) + 1:stride, :]
      out += patch @ kernel[i, j].astype(np.float64)
  return out


def _np_bn(x, bn, relu):
  """Inference-mode batch norm from a keras BatchNormalization's weights."""
  gamma = bn.gamma.numpy()
  beta = bn.beta.numpy() if bn.beta is not None else 0.0
  y = (x - bn.moving_mean.numpy()) / np.sqrt(
      bn.moving_variance.numpy() + bn.epsilon) * gamma + beta
  return np.maximum(y, 0.0) if relu else y


def _bn_layers(model):
  return [l for l in model._flatten_layers()  # pylint: disable=protected-access
          if isinstance(l, keras.layers.BatchNormalization)]


# ------------------------------------------------------ parameter counts ---


@pytest.mark.parametrize("depth,kwargs,expected", [
    (18, dict(stem=configs.STEM_CIFAR), 11_173_056),
    (50, dict(stem=configs.STEM_IMAGENET), 23_508_032),
    (50, dict(sk_ratio=0.0625, **RESNET_D), 35_215_584),
])
def test_backbone_trainable_parameter_count(depth, kwargs, expected):
  model = resnet.ResNet(depth, **kwargs)
  model(tf.zeros([1, 32, 32, 3]), training=False)
  assert _count_trainable(model) == expected


@pytest.mark.slow
@pytest.mark.parametrize("depth,width,expected", [
    (50, 2, 140_306_048),
    (101, 1, 64_662_304),
    (152, 1, 88_940_896),
    (152, 3, 794_704_160),
])
def test_large_sk_backbone_parameter_count(depth, width, expected):
  # Graph mode creates variables symbolically, so nothing is allocated.
  with tf.Graph().as_default():
    model = resnet.ResNet(depth, width, sk_ratio=0.0625, **RESNET_D)
    model(tf.compat.v1.placeholder(tf.float32, [1, 32, 32, 3]),
          training=False)
    assert _count_trainable(model) == expected


# --------------------------------------------------------- output shapes ---


def _shapes(model, input_shape):
  outputs = model(tf.zeros(input_shape), training=False)
  return {k: v.shape.as_list() for k, v in outputs.items()}


_R18_KEYS = (resnet.INITIAL_CONV, resnet.INITIAL_MAX_POOL, resnet.BLOCK_GROUP1,
             resnet.BLOCK_GROUP2, resnet.BLOCK_GROUP3, resnet.BLOCK_GROUP4)
_R18_CHANNELS = (64, 64, 64, 128, 256, 512)


@pytest.mark.parametrize("stem,input_shape,sizes", [
    (configs.STEM_CIFAR, [2, 32, 32, 3], (32, 32, 32, 16, 8, 4)),
    # Odd sizes: every stride-2 step gives ceil(H / 2).
    (configs.STEM_CIFAR, [1, 33, 33, 3], (33, 33, 33, 17, 9, 5)),
    (configs.STEM_IMAGENET, [1, 64, 64, 3], (32, 16, 16, 8, 4, 2)),
])
def test_stem_output_shapes(stem, input_shape, sizes):
  model = resnet.ResNet(18, stem=stem)
  batch = input_shape[0]
  expected = {key: [batch, size, size, channels]
              for key, size, channels in zip(_R18_KEYS, sizes, _R18_CHANNELS)}
  expected[resnet.FINAL_AVG_POOL] = [batch, 512]
  assert _shapes(model, input_shape) == expected


@pytest.mark.parametrize("kwargs,channels", [
    (dict(depth=18, stem=configs.STEM_IMAGENET), (64, 64, 128, 256, 512)),
    (dict(depth=50, width_multiplier=0.125, sk_ratio=0.0625, **RESNET_D),
     (8, 32, 64, 128, 256)),
])
def test_odd_input_sizes_round_up(kwargs, channels):
  model = resnet.ResNet(**kwargs)
  shapes = _shapes(model, [1, 65, 40, 3])
  # H: 65 -> 33 -> 17 -> 17 -> 9 -> 5 -> 3; W: 40 -> 20 -> 10 -> 10 -> 5 ...
  assert shapes[resnet.INITIAL_CONV] == [1, 33, 20, channels[0]]
  assert shapes[resnet.INITIAL_MAX_POOL] == [1, 17, 10, channels[0]]
  assert shapes[resnet.BLOCK_GROUP1] == [1, 17, 10, channels[1]]
  assert shapes[resnet.BLOCK_GROUP2] == [1, 9, 5, channels[2]]
  assert shapes[resnet.BLOCK_GROUP3] == [1, 5, 3, channels[3]]
  assert shapes[resnet.BLOCK_GROUP4] == [1, 3, 2, channels[4]]
  assert shapes[resnet.FINAL_AVG_POOL] == [1, channels[4]]


# --------------------------------------------------------- fixed padding ---


@pytest.mark.parametrize("kernel_size,fixed_pad,same_pad", [
    (3, (1, 1), (0, 1)),
    (7, (3, 3), (2, 3)),
    (1, (0, 0), (0, 0)),
])
def test_fixed_padding_conv_matches_numpy_and_differs_from_same(
    kernel_size, fixed_pad, same_pad):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
  layer = layers.Conv2dFixedPadding(3, kernel_size, 2)
  out = layer(x).numpy()
  kernel = layer.conv.kernel.numpy()
  assert out.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(
      out, _np_conv(x, kernel, 2, fixed_pad, fixed_pad), atol=1e-5)
  tf_same = tf.nn.conv2d(x, kernel, 2, "SAME").numpy()
  np.testing.assert_allclose(
      tf_same, _np_conv(x, kernel, 2, same_pad, same_pad), atol=1e-5)
  if kernel_size > 1:
    assert np.abs(out - tf_same).max() > 1e-2
  else:
    # A strided 1x1 samples pixels 0, 2, 4, ...
    np.testing.assert_allclose(out, x[:, ::2, ::2] @ kernel[0, 0], atol=1e-5)


def test_stride_one_conv_pads_symmetrically():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  layer = layers.Conv2dFixedPadding(3, 3, 1)
  out = layer(x).numpy()
  np.testing.assert_allclose(
      out, _np_conv(x, layer.conv.kernel.numpy(), 1, (1, 1), (1, 1)),
      atol=1e-5)


def test_conv_kernel_initializer_is_fan_in_truncated_normal():
  layer = layers.Conv2dFixedPadding(256, 3, 1)
  layer(tf.zeros([1, 4, 4, 64]))
  kernel = layer.conv.kernel.numpy()
  assert layer.conv.bias is None
  sigma = np.sqrt(1.0 / (3 * 3 * 64)) / 0.87962566
  assert np.abs(kernel).max() <= 2 * sigma + 1e-6
  # Truncation at 2 sigma leaves std = sigma * 0.8796.
  assert kernel.std() == pytest.approx(sigma * 0.87962566, rel=0.02)


# --------------------------------------------------- shortcut pools (Q1) ---


def test_stride_one_shortcut_pool_excludes_padding():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
  out = layers.ShortcutAvgPool(1)(x).numpy()
  expected = np.zeros_like(x)
  for i in range(3):
    for j in range(4):
      expected[0, i, j] = x[0, i:i + 2, j:j + 2].reshape(-1, 2).mean(axis=0)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  # Counting the padding would shrink the last row: the corner differs.
  assert abs(out[0, 2, 3, 0] - x[0, 2, 3, 0] / 4) > 1e-3


def test_stride_two_shortcut_pool_counts_padding():
  x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
  out = layers.ShortcutAvgPool(2)(x).numpy()[0, :, :, 0]
  padded = np.pad(x[0, :, :, 0], ((0, 1), (0, 1)))
  expected = padded.reshape(3, 2, 3, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(out, expected, atol=1e-6)
  assert out[2, 2] == pytest.approx(24 / 4)


# ------------------------------------------------ selective kernel / SE ---


def test_selective_kernel_matches_numpy():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  layer = layers.SelectiveKernel(4, 0.0625, strides=2)
  layer(x, training=False)
  _randomize(layer, seed=5)
  out = layer(x, training=False).numpy()
  assert layer.mid_dim == 32
  assert layer.reduce_conv.kernel.shape.as_list() == [1, 1, 4, 32]
  assert layer.expand_conv.kernel.shape.as_list() == [1, 1, 32, 8]

  feats = _np_conv(x, layer.conv.conv.kernel.numpy(), 2, (1, 1), (1, 1))
  feats = _np_bn(feats, layer.bn_relu.bn, relu=True)
  branch_a, branch_b = feats[..., :4], feats[..., 4:]
  squeezed = (branch_a + branch_b).mean(axis=(1, 2))
  attention = _np_bn(squeezed @ layer.reduce_conv.kernel.numpy()[0, 0],
                     layer.reduce_bn_relu.bn, relu=True)
  logits = attention @ layer.expand_conv.kernel.numpy()[0, 0]
  a, b = logits[:, :4], logits[:, 4:]
  weight_a = (np.exp(a) / (np.exp(a) + np.exp(b)))[:, None, None, :]
  expected = weight_a * branch_a + (1 - weight_a) * branch_b
  assert out.shape == (2, 3, 3, 4)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_selective_kernel_mid_width_follows_scaled_filters():
  assert layers.SelectiveKernel(512, 0.0625).mid_dim == 32
  assert layers.SelectiveKernel(1024, 0.0625).mid_dim == 64
  assert layers.SelectiveKernel(768, 0.0625).mid_dim == 48


def test_squeeze_excitation_matches_numpy():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 3, 3, 32)).astype(np.float32)
  layer = layers.SqueezeExcitation(8, 0.25)
  layer(x)
  _randomize(layer, seed=7)
  out = layer(x).numpy()
  assert layer.reduce_conv.kernel.shape.as_list() == [1, 1, 32, 2]
  assert layer.expand_conv.kernel.shape.as_list() == [1, 1, 2, 32]
  squeezed = x.mean(axis=(1, 2))
  hidden = np.maximum(squeezed @ layer.reduce_conv.kernel.numpy()[0, 0]
                      + layer.reduce_conv.bias.numpy(), 0)
  gate_logits = (hidden @ layer.expand_conv.kernel.numpy()[0, 0]
                 + layer.expand_conv.bias.numpy())
  expected = x * (1 / (1 + np.exp(-gate_logits)))[:, None, None, :]
  np.testing.assert_allclose(out, expected, atol=1e-5)


# ------------------------------------------------------ zero-init gamma ---


@pytest.mark.parametrize("kwargs,num_blocks", [
    (dict(depth=18, width_multiplier=0.25, stem=configs.STEM_CIFAR), 8),
    (dict(depth=50, width_multiplier=0.125, sk_ratio=0.0625, **RESNET_D), 16),
])
def test_only_last_branch_bn_has_zero_gamma(kwargs, num_blocks):
  model = resnet.ResNet(**kwargs)
  model(tf.zeros([1, 16, 16, 3]), training=False)
  zero = [bn for bn in _bn_layers(model)
          if not np.any(bn.gamma.numpy())]
  ones = [bn for bn in _bn_layers(model)
          if np.all(bn.gamma.numpy() == 1.0)]
  assert len(zero) == num_blocks
  assert len(zero) + len(ones) == len(_bn_layers(model))
  for group in model.block_groups:
    for block in group.blocks:
      last = block.bn_3 if isinstance(block, resnet.BottleneckBlock) else (
          block.bn_2)
      assert not np.any(last.bn.gamma.numpy())
      assert np.all(block.bn_relu_1.bn.gamma.numpy() == 1.0)
      if block.projection is not None:
        assert np.all(block.projection.bn.bn.gamma.numpy() == 1.0)


def test_fresh_block_output_is_relu_of_shortcut():
  # With gamma = beta = 0 on the last branch BN the residual branch is zero.
  rng = np.random.default_rng(8)
  x = rng.normal(size=(1, 6, 6, 16)).astype(np.float32)
  identity_block = resnet.BottleneckBlock(4, sk_ratio=0.0625)
  np.testing.assert_allclose(identity_block(x, training=False).numpy(),
                             np.maximum(x, 0), atol=1e-6)
  projection_block = resnet.BasicBlock(8, 2, use_projection=True)
  out = projection_block(x, training=False).numpy()
  shortcut = projection_block.projection(x, training=False).numpy()
  np.testing.assert_allclose(out, np.maximum(shortcut, 0), atol=1e-6)


# ---------------------------------------------------------- widths / args ---


def test_fractional_widths_build():
  model = resnet.ResNet(18, 0.25, stem=configs.STEM_CIFAR)
  assert _shapes(model, [1, 8, 8, 3])[resnet.FINAL_AVG_POOL] == [1, 128]
  model = resnet.ResNet(50, 0.5, sk_ratio=0.0625, **RESNET_D)
  shapes = _shapes(model, [1, 16, 16, 3])
  assert shapes[resnet.FINAL_AVG_POOL] == [1, 1024]
  assert model.output_channels == 1024
  assert [c.filters for c in model.stem_layer.convs] == [16, 16, 32]
  assert model.block_groups[3].blocks[0].selective_kernel.mid_dim == 32
  assert resnet.scaled_width(64, 0.3) == 19
  assert resnet.scaled_width(64, 0.001) == 1


def test_resnet_parameter_layout_and_config_defaults():
  model = resnet.ResNet(50, stem=configs.STEM_IMAGENET)
  model(tf.zeros([1, 32, 32, 3]), training=False)
  bns = _bn_layers(model)
  assert {bn.epsilon for bn in bns} == {1e-5}
  assert {bn.momentum for bn in bns} == {0.9}
  assert not any(bn.synchronized for bn in bns)
  sync = resnet.ResNet(18, stem=configs.STEM_CIFAR, global_bn=True,
                       batch_norm_decay=0.99, batch_norm_epsilon=1e-3)
  sync(tf.zeros([1, 8, 8, 3]), training=False)
  assert all(bn.synchronized and bn.momentum == 0.99 and bn.epsilon == 1e-3
             for bn in _bn_layers(sync))


@pytest.mark.parametrize("kwargs,arg", [
    (dict(depth=20), "depth"),
    (dict(depth=50, width_multiplier=0), "width_multiplier"),
    (dict(depth=50, width_multiplier=-1.0), "width_multiplier"),
    (dict(depth=50, sk_ratio=-0.1), "sk_ratio"),
    (dict(depth=50, se_ratio=-1), "se_ratio"),
    (dict(depth=50, stem="tiny"), "stem"),
    (dict(depth=50, shortcut="avg"), "shortcut"),
    (dict(depth=50, batch_norm_decay=1.5), "batch_norm_decay"),
    (dict(depth=50, batch_norm_epsilon=0.0), "batch_norm_epsilon"),
    (dict(depth=50, frozen_through_block=5), "frozen_through_block"),
    (dict(depth=50, frozen_through_block=-2), "frozen_through_block"),
])
def test_resnet_bad_arguments_raise(kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    resnet.ResNet(**kwargs)


@pytest.mark.parametrize("factory,arg", [
    (lambda: heads.ProjectionHead(mode="mlp"), "mode"),
    (lambda: heads.ProjectionHead(num_layers=0), "num_layers"),
    (lambda: heads.ProjectionHead(out_dim=0), "out_dim"),
    (lambda: heads.ProjectionHead(ft_proj_selector=4), "ft_proj_selector"),
    (lambda: heads.ProjectionHead(ft_proj_selector=-5), "ft_proj_selector"),
    (lambda: heads.ProjectionHead(mode="linear", ft_proj_selector=2),
     "ft_proj_selector"),
    (lambda: heads.ProjectionHead(mode="none", ft_proj_selector=1),
     "ft_proj_selector"),
    (lambda: heads.SupervisedHead(0), "num_classes"),
    (lambda: layers.Conv2dFixedPadding(0, 3), "filters"),
    (lambda: layers.ShortcutAvgPool(3), "strides"),
    (lambda: layers.SelectiveKernel(8, 0.0), "sk_ratio"),
    (lambda: layers.SqueezeExcitation(8, 0.0), "se_ratio"),
    (lambda: simclr_model.SimCLRModel("resnet", heads.ProjectionHead()),
     "backbone"),
    (lambda: simclr_model.SimCLRModel(
        resnet.ResNet(18), heads.ProjectionHead(), linear_eval=True),
     "linear_eval"),
    (lambda: builder.build_model(configs.ModelConfig(width_multiplier=1.0),
                                 configs.HeadConfig(), "train"), "train_mode"),
    (lambda: builder.build_model(configs.ModelConfig(width_multiplier=1.0),
                                 configs.HeadConfig(), "pretrain",
                                 frozen_through_block=2),
     "frozen_through_block"),
])
def test_bad_arguments_raise(factory, arg):
  with pytest.raises(ValueError, match=arg):
    factory()


# -------------------------------------------------------- projection head ---


def test_projection_head_selector_values_match_numpy():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(3, 6)).astype(np.float32)
  head = heads.ProjectionHead(num_layers=3, out_dim=4)
  head(x, training=False)
  _randomize(head, seed=10)
  assert [d.kernel.shape.as_list() for d in head.dense_layers] == [
      [6, 6], [6, 6], [6, 4]]
  assert all(d.bias is None for d in head.dense_layers)
  assert [bn.bn.beta is None for bn in head.bn_layers] == [False, False, True]
  hiddens = [x.astype(np.float64)]
  for j, (dense, bn) in enumerate(zip(head.dense_layers, head.bn_layers)):
    hiddens.append(_np_bn(hiddens[-1] @ dense.kernel.numpy(), bn.bn,
                          relu=j < 2))
  for selector in (0, 1, 2, 3, -1, -2, -4):
    selected = heads.ProjectionHead(num_layers=3, out_dim=4,
                                    ft_proj_selector=selector)
    selected(x, training=False)
    selected.set_weights(head.get_weights())
    outputs = selected(x, training=False)
    np.testing.assert_allclose(outputs[heads.SUPERVISED_HEAD_INPUT].numpy(),
                               hiddens[selector], atol=1e-5)
    np.testing.assert_allclose(outputs[heads.PROJ_HEAD_OUTPUT].numpy(),
                               hiddens[3], atol=1e-5)


def test_projection_head_linear_and_none_modes():
  rng = np.random.default_rng(11)
  x = rng.normal(size=(3, 6)).astype(np.float32)
  none = heads.ProjectionHead(mode="none", ft_proj_selector=-1)
  outputs = none(x, training=False)
  assert not none.weights
  np.testing.assert_array_equal(outputs[heads.PROJ_HEAD_OUTPUT].numpy(), x)
  np.testing.assert_array_equal(outputs[heads.SUPERVISED_HEAD_INPUT].numpy(),
                                x)
  linear = heads.ProjectionHead(mode="linear", num_layers=5, out_dim=4,
                                ft_proj_selector=1)
  linear(x, training=False)
  _randomize(linear, seed=12)
  outputs = linear(x, training=False)
  assert len(linear.dense_layers) == 1
  assert linear.bn_layers[0].bn.beta is None
  expected = _np_bn(x @ linear.dense_layers[0].kernel.numpy(),
                    linear.bn_layers[0].bn, relu=False)
  np.testing.assert_allclose(outputs[heads.PROJ_HEAD_OUTPUT].numpy(),
                             expected, atol=1e-5)
  np.testing.assert_allclose(outputs[heads.SUPERVISED_HEAD_INPUT].numpy(),
                             expected, atol=1e-5)


def test_supervised_head_initialisation():
  head = heads.SupervisedHead(1000)
  assert head.name == "head_supervised"
  head(tf.zeros([1, 2048]))
  kernel = head.dense.kernel.numpy()
  assert kernel.std() == pytest.approx(0.01, rel=0.02)
  assert not np.any(head.dense.bias.numpy())
  zero = heads.SupervisedHead(10, zero_init=True)
  zero(tf.ones([2, 8]))
  assert not np.any(zero.dense.kernel.numpy())
  assert not np.any(zero.dense.bias.numpy())
  head.zero_weights()
  assert not np.any(head(tf.ones([1, 2048])).numpy())


# ------------------------------------------------------------ full model ---


def _tiny_model(train_mode="pretrain", lineareval=True, selector=0,
                global_bn=False):
  return builder.build_model(
      configs.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                          stem=configs.STEM_CIFAR, global_bn=global_bn),
      configs.HeadConfig(num_proj_layers=2, proj_out_dim=8, num_classes=3,
                         ft_proj_selector=selector,
                         lineareval_while_pretraining=lineareval),
      train_mode)


def test_model_outputs_and_builder_modes():
  images = tf.random.uniform([2, 8, 8, 3], seed=1)
  model = _tiny_model()
  outputs = model(images, training=False)
  assert set(outputs) == set(resnet.OUTPUT_KEYS) | {
      simclr_model.PROJ_HEAD_INPUT, simclr_model.PROJ_HEAD_OUTPUT,
      simclr_model.LOGITS_SUP}
  np.testing.assert_array_equal(outputs[simclr_model.PROJ_HEAD_INPUT],
                                outputs[resnet.FINAL_AVG_POOL])
  assert outputs[simclr_model.PROJ_HEAD_OUTPUT].shape == (2, 8)
  assert outputs[simclr_model.LOGITS_SUP].shape == (2, 3)
  assert model.linear_eval
  assert model.supervised_head.name == "head_supervised"

  no_head = _tiny_model(lineareval=False)
  assert no_head.supervised_head is None
  assert simclr_model.LOGITS_SUP not in no_head(images, training=False)
  for mode in ("finetune", "supervised", "distill"):
    model = _tiny_model(train_mode=mode, lineareval=False)
    assert model.supervised_head is not None and not model.linear_eval


@pytest.mark.parametrize("train_mode,reaches_backbone", [
    ("pretrain", False), ("finetune", True)])
def test_linear_eval_stops_supervised_gradient(train_mode, reaches_backbone):
  images = tf.random.uniform([2, 8, 8, 3], seed=2)
  model = _tiny_model(train_mode=train_mode, selector=1)
  model(images, training=True)
  with tf.GradientTape() as tape:
    logits = model(images, training=True)[simclr_model.LOGITS_SUP]
    loss = tf.reduce_sum(logits ** 2)
  backbone_grads, first_proj_grads, head_grads = tape.gradient(
      loss, [model.backbone.trainable_variables,
             model.projection_head.dense_layers[0].trainable_variables,
             model.supervised_head.trainable_variables])
  assert len(backbone_grads) == 63  # 21 convs, 21 BNs (gamma, beta).
  assert all((g is not None) == reaches_backbone
             for g in backbone_grads + first_proj_grads)
  assert all(g is not None for g in head_grads)


# --------------------------------------------------------------- freezing ---


@pytest.mark.parametrize("frozen", [0, 2, 4])
def test_frozen_through_block(frozen):
  model = resnet.ResNet(18, 0.125, stem=configs.STEM_CIFAR,
                        frozen_through_block=frozen)
  images = tf.random.uniform([4, 8, 8, 3], seed=3)
  model(images, training=False)
  frozen_parts = model.parts[:frozen + 1]
  free_parts = model.parts[frozen + 1:]
  trainable_ids = {id(v) for v in model.trainable_variables}
  for part in frozen_parts:
    assert not part.trainable
    assert not any(id(v) in trainable_ids for v in part.variables)
  for part in free_parts:
    assert all(id(v) in trainable_ids for v in part.trainable_weights)
    assert part.trainable_weights

  before = {id(v): v.numpy() for bn in _bn_layers(model)
            for v in (bn.moving_mean, bn.moving_variance)}
  with tf.GradientTape() as tape:
    tape.watch(images)
    outputs = model(images, training=True)
    loss = tf.reduce_sum(outputs[resnet.FINAL_AVG_POOL])
  assert tape.gradient(loss, images) is None
  frozen_bns = {id(bn) for part in frozen_parts for bn in _bn_layers(part)}
  for bn in _bn_layers(model):
    unchanged = all(np.array_equal(before[id(v)], v.numpy())
                    for v in (bn.moving_mean, bn.moving_variance))
    assert unchanged == (id(bn) in frozen_bns)
  # Frozen parts compute in inference mode even when training.
  key = resnet.INITIAL_MAX_POOL if frozen == 0 else resnet.BLOCK_GROUPS[
      frozen - 1]
  np.testing.assert_allclose(outputs[key].numpy(),
                             model(images, training=False)[key].numpy(),
                             atol=1e-6)


def test_unfrozen_backbone_passes_gradient_to_images():
  model = resnet.ResNet(18, 0.125, stem=configs.STEM_CIFAR)
  images = tf.random.uniform([2, 8, 8, 3], seed=4)
  with tf.GradientTape() as tape:
    tape.watch(images)
    loss = tf.reduce_sum(model(images, training=True)[resnet.FINAL_AVG_POOL])
  assert tape.gradient(loss, images) is not None


# ---------------------------------------------- optimiser name selection ---


def test_exclusion_regexes_select_by_role():
  model = builder.build_model(
      configs.ModelConfig(resnet_depth=50, width_multiplier=0.125,
                          sk_ratio=0.0625, se_ratio=0.25,
                          stem=configs.STEM_RESNET_D,
                          shortcut=configs.SHORTCUT_RESNET_D),
      configs.HeadConfig(num_proj_layers=2, proj_out_dim=8, num_classes=3),
      "finetune")
  model(tf.zeros([1, 16, 16, 3]), training=False)
  bn_params = {id(v) for bn in _bn_layers(model) for v in bn.trainable_weights}
  all_layers = model._flatten_layers()  # pylint: disable=protected-access
  biases = {id(l.bias) for l in all_layers
            if getattr(l, "bias", None) is not None}
  head = {id(v) for v in model.supervised_head.variables}
  assert len(biases) == 16 * 2 + 1
  for variable in model.trainable_variables:
    excluded = any(re.search(p, variable.name) for p in
                   ("batch_normalization", "bias", "head_supervised"))
    by_role = id(variable) in bn_params | biases | head
    assert excluded == by_role, variable.name


# ------------------------------------------------- config round trip ----


_ROUND_TRIP_CASES = [
    (lambda: layers.Conv2dFixedPadding(4, 3, 2, name="c"), [1, 7, 7, 3]),
    (lambda: layers.BatchNormRelu(relu=False, init_zero=True, center=False,
                                  batch_norm_decay=0.8,
                                  batch_norm_epsilon=1e-3), [2, 4, 4, 3]),
    (lambda: layers.SelectiveKernel(8, 0.0625, 2), [1, 5, 5, 3]),
    (lambda: layers.SqueezeExcitation(4, 0.25), [1, 4, 4, 16]),
    (lambda: layers.ShortcutAvgPool(1), [1, 3, 3, 2]),
    (lambda: resnet.Stem(configs.STEM_CIFAR, 8), [1, 5, 5, 3]),
    (lambda: resnet.Stem(configs.STEM_IMAGENET, 8), [1, 9, 9, 3]),
    (lambda: resnet.Stem(configs.STEM_RESNET_D, 8, global_bn=True),
     [1, 9, 9, 3]),
    (lambda: layers.BatchNormalization(momentum=0.8, fused_training=False),
     [2, 3, 3, 4]),
    (lambda: layers.BatchNormRelu(relu=False, fused_batch_norm=False),
     [2, 3, 3, 4]),
    (lambda: resnet.ProjectionShortcut(8, 2, configs.SHORTCUT_RESNET_D),
     [1, 5, 5, 4]),
    (lambda: resnet.BasicBlock(8, 2, True, se_ratio=0.25), [1, 5, 5, 4]),
    (lambda: resnet.BottleneckBlock(
        4, 2, True, sk_ratio=0.0625, se_ratio=0.25,
        shortcut=configs.SHORTCUT_RESNET_D), [1, 5, 5, 4]),
    (lambda: resnet.BlockGroup(4, 2, 2, True, sk_ratio=0.0625), [1, 5, 5, 4]),
    (lambda: resnet.ResNet(18, 0.125, stem=configs.STEM_CIFAR,
                           frozen_through_block=1), [1, 8, 8, 3]),
    (lambda: resnet.ResNet(50, 0.125, sk_ratio=0.0625, **RESNET_D),
     [1, 16, 16, 3]),
    (lambda: heads.ProjectionHead(num_layers=2, out_dim=4, ft_proj_selector=1,
                                  batch_norm_epsilon=1e-4), [2, 8]),
    (lambda: heads.SupervisedHead(3, zero_init=True), [2, 8]),
    (lambda: simclr_model.SimCLRModel(
        resnet.ResNet(18, 0.125, stem=configs.STEM_CIFAR),
        heads.ProjectionHead(num_layers=2, out_dim=4),
        heads.SupervisedHead(3), linear_eval=True), [2, 8, 8, 3]),
]


def _call(layer, x):
  if isinstance(layer, (layers.Conv2dFixedPadding, layers.SqueezeExcitation,
                        layers.ShortcutAvgPool, heads.SupervisedHead)):
    return layer(x)
  return layer(x, training=False)


@pytest.mark.parametrize("factory,shape", _ROUND_TRIP_CASES)
def test_get_config_round_trip(factory, shape):
  layer = factory()
  x = tf.random.uniform(shape, seed=5)
  _call(layer, x)
  _randomize(layer, seed=13)
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  _call(clone, x)
  assert len(clone.weights) == len(layer.weights)
  clone.set_weights(layer.get_weights())
  for expected, actual in zip(tf.nest.flatten(_call(layer, x)),
                              tf.nest.flatten(_call(clone, x))):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=1e-6)


# ------------------------------------------------------------------- XLA ---


def _xla_gradients(layer_list, inputs):
  """Runs a jit-compiled forward/backward pass over each (layer, input)."""
  for layer, x in zip(layer_list, inputs):
    layer(x, training=True)
  variables = [v for layer in layer_list for v in layer.trainable_variables]

  @tf.function(jit_compile=True)
  def step(inputs):
    with tf.GradientTape() as tape:
      loss = 0.0
      for layer, x in zip(layer_list, inputs):
        loss += sum(tf.reduce_sum(t ** 2) for t in tf.nest.flatten(
            layer(x, training=True)))
    return loss, tape.gradient(loss, variables)

  loss, grads = step(inputs)
  assert np.isfinite(loss.numpy())
  assert all(g is not None for g in grads)


def test_blocks_and_heads_compile_with_xla():
  _xla_gradients(
      [resnet.BottleneckBlock(4, 2, True, sk_ratio=0.0625, se_ratio=0.25,
                              shortcut=configs.SHORTCUT_RESNET_D,
                              global_bn=True),
       heads.ProjectionHead(num_layers=2, out_dim=4, ft_proj_selector=-1,
                            global_bn=True)],
      [tf.random.uniform([2, 5, 5, 8], seed=7),
       tf.random.uniform([2, 8], seed=9)])


@pytest.mark.slow
def test_full_model_compiles_with_xla():
  _xla_gradients(
      [_tiny_model(train_mode="finetune", global_bn=True),
       resnet.Stem(configs.STEM_RESNET_D, 8, global_bn=True),
       resnet.BasicBlock(4, 1, True, shortcut=configs.SHORTCUT_RESNET_D)],
      [tf.random.uniform([2, 8, 8, 3], seed=10),
       tf.random.uniform([2, 9, 9, 3], seed=6),
       tf.random.uniform([2, 5, 5, 8], seed=8)])


# ---------------------------------------------------- distribution / sync ---


# One strategy per test: MirroredStrategy instances in a process share
# collective keys, so collectives of different shapes from two instances
# collide.
def test_mirrored_strategy_sync_bn_and_model_forward(two_cpu_strategy):
  strategy = two_cpu_strategy
  with strategy.scope():
    bn_layers = {g: layers.BatchNormRelu(global_bn=g) for g in (True, False)}
    for layer in bn_layers.values():
      layer.build(tf.TensorShape([None, 1]))
    model = _tiny_model(train_mode="finetune", global_bn=True)
    model(tf.zeros([1, 8, 8, 3]), training=False)

  @tf.function
  def bn_step():
    def replica_fn():
      ctx = tf.distribute.get_replica_context()
      value = tf.cast(ctx.replica_id_in_sync_group + 1, tf.float32)
      means = []
      for layer in bn_layers.values():
        layer(tf.fill([4, 1], value), training=True)
        means.append(tf.identity(layer.bn.moving_mean))
      return means
    return strategy.run(replica_fn)

  per_replica = [strategy.experimental_local_results(m) for m in bn_step()]
  # global_bn: 0.1 * mean over both replicas' batches; else per replica.
  np.testing.assert_allclose([m.numpy()[0] for m in per_replica[0]],
                             [0.15, 0.15], atol=1e-6)
  np.testing.assert_allclose([m.numpy()[0] for m in per_replica[1]],
                             [0.1, 0.2], atol=1e-6)

  # A full model's variables are created and its synchronized BNs run.
  @tf.function
  def forward(images):
    return strategy.run(
        lambda x: model(x, training=True)[simclr_model.LOGITS_SUP],
        args=(images,))

  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(tf.random.uniform([4, 8, 8, 3], seed=11)))
  logits = strategy.experimental_local_results(forward(next(iter(dataset))))
  assert [l.shape for l in logits] == [(2, 3), (2, 3)]
  assert all(np.all(np.isfinite(l.numpy())) for l in logits)
