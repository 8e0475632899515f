"""The SimCLR model: backbone, projection head, optional supervised head.

See SPEC §2.4.

Components are injected, so the same class serves pretraining (with or without
a stop-gradient linear-eval head), fine-tuning, supervised training and
distillation. Views are concatenated on the batch axis by the trainer; the
model applies no augmentation.
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf
import tf_keras as keras

from tf_simclr.models import heads
from tf_simclr.models import resnet

PROJ_HEAD_INPUT = "proj_head_input"
PROJ_HEAD_OUTPUT = heads.PROJ_HEAD_OUTPUT
LOGITS_SUP = "logits_sup"
_PACKAGE = "tf_simclr"
_FLOAT32_OUTPUTS = (resnet.FINAL_AVG_POOL, PROJ_HEAD_INPUT, PROJ_HEAD_OUTPUT,
                    LOGITS_SUP)


def _serialize_component(layer: keras.layers.Layer) -> dict[str, Any]:
  # Only class and constructor config: Keras' own serialisation would add a
  # build config that rebuilds subclassed models eagerly.
  return {"class_name": keras.saving.get_registered_name(type(layer)),
          "config": layer.get_config()}


def _deserialize_component(config: dict[str, Any], custom_objects=None
                           ) -> keras.layers.Layer:
  cls = keras.saving.get_registered_object(config["class_name"],
                                           custom_objects)
  if cls is None:
    return keras.layers.deserialize(config, custom_objects=custom_objects)
  return cls.from_config(config["config"])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SimCLRModel(keras.Model):
  """Backbone, projection head and optional supervised head.

  `call(images [N, H, W, 3], training)` returns the backbone's dict plus
  PROJ_HEAD_INPUT (= final_avg_pool), PROJ_HEAD_OUTPUT (un-normalised
  projection) and, only with a supervised head, LOGITS_SUP computed on the
  projection head's selected activation. The projection head always runs, so
  its BN statistics keep updating in every mode, as in the reference.

  Args:
    backbone: a `resnet.ResNet` (any layer returning the same dict works).
    projection_head: a `heads.ProjectionHead`.
    supervised_head: optional `heads.SupervisedHead`.
    linear_eval: feed the supervised head through `tf.stop_gradient` so no
      label information reaches the backbone or projection head (linear
      evaluation while pretraining).
    **kwargs: forwarded to `keras.Model`.
  """

  def __init__(self,
               backbone: keras.layers.Layer,
               projection_head: keras.layers.Layer,
               supervised_head: Optional[keras.layers.Layer] = None,
               linear_eval: bool = False,
               **kwargs):
    kwargs.setdefault("name", "simclr_model")
    super().__init__(**kwargs)
    for arg, value in (("backbone", backbone),
                       ("projection_head", projection_head)):
      if not isinstance(value, keras.layers.Layer):
        raise ValueError(f"{arg} must be a keras Layer, got {value!r}")
    if supervised_head is not None and not isinstance(
        supervised_head, keras.layers.Layer):
      raise ValueError(
          f"supervised_head must be a keras Layer or None, got "
          f"{supervised_head!r}")
    if linear_eval and supervised_head is None:
      raise ValueError(
          "linear_eval must be False when there is no supervised_head, got "
          f"{linear_eval!r}")
    self.backbone = backbone
    self.projection_head = projection_head
    self.supervised_head = supervised_head
    self.linear_eval = linear_eval

  def call(self, images: tf.Tensor, training: Optional[bool] = None
           ) -> dict[str, tf.Tensor]:
    outputs = dict(self.backbone(images, training=training))
    features = outputs[resnet.FINAL_AVG_POOL]
    outputs[PROJ_HEAD_INPUT] = features
    head_outputs = self.projection_head(features, training=training)
    outputs[PROJ_HEAD_OUTPUT] = head_outputs[heads.PROJ_HEAD_OUTPUT]
    if self.supervised_head is not None:
      head_input = head_outputs[heads.SUPERVISED_HEAD_INPUT]
      if self.linear_eval:
        head_input = tf.stop_gradient(head_input)
      outputs[LOGITS_SUP] = self.supervised_head(head_input)
    # Under a mixed-precision policy the small outputs that losses, metrics,
    # features and exports read leave in float32; the large block-group
    # activations keep the compute dtype.
    for key in _FLOAT32_OUTPUTS:
      if key in outputs and outputs[key].dtype != tf.float32:
        outputs[key] = tf.cast(outputs[key], tf.float32)
    return outputs

  def get_config(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "trainable": self.trainable,
        "backbone": _serialize_component(self.backbone),
        "projection_head": _serialize_component(self.projection_head),
        "supervised_head": (
            None if self.supervised_head is None
            else _serialize_component(self.supervised_head)),
        "linear_eval": self.linear_eval,
    }

  @classmethod
  def from_config(cls, config: dict[str, Any], custom_objects=None
                  ) -> "SimCLRModel":
    config = dict(config)
    for key in ("backbone", "projection_head", "supervised_head"):
      if config.get(key) is not None:
        config[key] = _deserialize_component(config[key], custom_objects)
    return cls(**config)
