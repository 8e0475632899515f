"""Projection head and supervised (linear) head."""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf
import tf_keras as keras

from tf_simclr.models import layers as layers_lib

PROJ_HEAD_OUTPUT = "proj_head_output"
SUPERVISED_HEAD_INPUT = "supervised_head_input"

PROJ_HEAD_NONE = "none"
PROJ_HEAD_LINEAR = "linear"
PROJ_HEAD_NONLINEAR = "nonlinear"
PROJ_HEAD_MODES = (PROJ_HEAD_NONE, PROJ_HEAD_LINEAR, PROJ_HEAD_NONLINEAR)

SUPERVISED_HEAD_NAME = "head_supervised"
_PACKAGE = "tf_simclr"


def _dense_initializer() -> keras.initializers.Initializer:
  return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ProjectionHead(layers_lib.BatchNormOptionsLayer):
  """SimCLR projection head g(h) returning its output and a chosen activation.

  Modes:
  * 'nonlinear': `num_layers` layers of Dense(no bias) + BN; hidden layers
    keep the input width D and have BN with beta + ReLU; the last maps to
    `out_dim` with a beta-free BN and no ReLU.
  * 'linear': a single Dense(D -> out_dim, no bias) + beta-free BN.
  * 'none': the output is the input.
  (The original code's 'linear' and 'none' modes are broken; these are their
  intended semantics, docs/COMPATIBILITY.md.)

  With hiddens = [h, a_1, ..., a_L] (a_j the output of layer j), the call
  returns {PROJ_HEAD_OUTPUT: hiddens[-1], SUPERVISED_HEAD_INPUT:
  hiddens[ft_proj_selector]} using Python list indexing (0: h, 1: after the
  first layer, -1: the projection output).

  Args:
    mode: one of `PROJ_HEAD_MODES`.
    num_layers: number of layers in 'nonlinear' mode (>= 1).
    out_dim: projection output width.
    ft_proj_selector: index into hiddens of the supervised-head input; must be
      in [-len(hiddens), len(hiddens)).
    **kwargs: batch-norm options (`layers.BatchNormOptionsLayer`;
      `fused_batch_norm` has no effect here, the head's inputs are 2-D) and
      `keras.layers.Layer` arguments.
  """

  def __init__(self,
               mode: str = PROJ_HEAD_NONLINEAR,
               num_layers: int = 3,
               out_dim: int = 128,
               ft_proj_selector: int = 0,
               **kwargs):
    kwargs.setdefault("name", "projection_head")
    super().__init__(**kwargs)
    if mode not in PROJ_HEAD_MODES:
      raise ValueError(f"mode must be one of {PROJ_HEAD_MODES}, got {mode!r}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or (
        num_layers < 1):
      raise ValueError(
          f"num_layers must be a positive integer, got {num_layers!r}")
    if isinstance(out_dim, bool) or not isinstance(out_dim, int) or (
        out_dim < 1):
      raise ValueError(f"out_dim must be a positive integer, got {out_dim!r}")
    self.mode = mode
    self.num_layers = num_layers
    self.out_dim = out_dim
    self.ft_proj_selector = ft_proj_selector
    num_hiddens = self.num_projection_layers + 1
    if isinstance(ft_proj_selector, bool) or not isinstance(
        ft_proj_selector, int) or not (
            -num_hiddens <= ft_proj_selector < num_hiddens):
      raise ValueError(
          f"ft_proj_selector must be an integer in [{-num_hiddens}, "
          f"{num_hiddens - 1}] for mode {mode!r} with {num_layers} layers, "
          f"got {ft_proj_selector!r}")
    self.dense_layers = []
    self.bn_layers = []

  @property
  def num_projection_layers(self) -> int:
    """Number of Dense+BN layers actually used by the mode."""
    if self.mode == PROJ_HEAD_NONLINEAR:
      return self.num_layers
    return 1 if self.mode == PROJ_HEAD_LINEAR else 0

  def build(self, input_shape: tf.TensorShape) -> None:
    input_dim = int(input_shape[-1])
    count = self.num_projection_layers
    for j in range(count):
      last = j == count - 1
      self.dense_layers.append(keras.layers.Dense(
          self.out_dim if last else input_dim,
          use_bias=False,
          kernel_initializer=_dense_initializer(),
          name=f"dense_{j}"))
      self.bn_layers.append(layers_lib.BatchNormRelu(
          relu=not last,
          center=not last,
          name=f"batch_norm_relu_{j}",
          **self.bn_kwargs))
    super().build(input_shape)

  def call(self, inputs: tf.Tensor, training: Optional[bool] = None
           ) -> dict[str, tf.Tensor]:
    hiddens = [inputs]
    for dense, bn in zip(self.dense_layers, self.bn_layers):
      hiddens.append(bn(dense(hiddens[-1]), training=training))
    return {
        PROJ_HEAD_OUTPUT: hiddens[-1],
        SUPERVISED_HEAD_INPUT: hiddens[self.ft_proj_selector],
    }

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(mode=self.mode, num_layers=self.num_layers,
                  out_dim=self.out_dim, ft_proj_selector=self.ft_proj_selector)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SupervisedHead(keras.layers.Layer):
  """Linear classifier producing `logits_sup`, named 'head_supervised'.

  The name matters: the optimiser excludes variables whose name contains
  'head_supervised' from LARS decay/adaptation.

  Args:
    num_classes: number of logits.
    zero_init: initialise kernel and bias to zero (the reference's
      `zero_init_logits_layer`, which was ineffective there); when
      False the kernel is RandomNormal(0, 0.01) and the bias zero. Weights
      restored from a checkpoint afterwards replace the initial values; call
      `zero_weights()` after restoring to zero them again.
    **kwargs: forwarded to `keras.layers.Layer`.
  """

  def __init__(self, num_classes: int, zero_init: bool = False, **kwargs):
    kwargs.setdefault("name", SUPERVISED_HEAD_NAME)
    super().__init__(**kwargs)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
        num_classes < 1):
      raise ValueError(
          f"num_classes must be a positive integer, got {num_classes!r}")
    self.num_classes = num_classes
    self.zero_init = zero_init
    self.dense = keras.layers.Dense(
        num_classes,
        use_bias=True,
        kernel_initializer="zeros" if zero_init else _dense_initializer(),
        bias_initializer="zeros",
        name="dense")

  def zero_weights(self) -> None:
    """Sets kernel and bias to zero (the layer must be built)."""
    if not self.dense.built:
      raise ValueError("zero_weights needs a built layer; call it first")
    for variable in (self.dense.kernel, self.dense.bias):
      variable.assign(tf.zeros_like(variable))

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    return self.dense(inputs)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(num_classes=self.num_classes, zero_init=self.zero_init)
    return config
