"""--precision: dtype policies, float32 outputs, loss scaling, and training."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr import configs
from tf_simclr.models import builder
from tf_simclr.models import resnet
from tf_simclr.models import simclr_model
from tf_simclr.training import experiment
from tf_simclr.training import optimizer as optimizer_lib
from tf_simclr.training import precision

from test_experiment import tiny_config


def test_policy_scope_sets_and_restores_the_global_policy():
  before = keras.mixed_precision.global_policy().name
  with precision.policy_scope("mixed_bfloat16"):
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
  assert keras.mixed_precision.global_policy().name == before
  with pytest.raises(ValueError, match="precision must be one of .*'fp8'"):
    with precision.policy_scope("fp8"):
      pass


def test_mixed_bfloat16_model_computes_in_bf16_with_float32_outputs():
  with precision.policy_scope("mixed_bfloat16"):
    model = builder.build_model(
        configs.ModelConfig(resnet_depth=18, width_multiplier=0.125,
                            stem=configs.STEM_CIFAR),
        configs.HeadConfig(proj_out_dim=8, num_classes=3), "pretrain")
  outputs = model(tf.zeros([2, 8, 8, 3]), training=True)
  assert all(v.dtype == tf.float32 for v in model.variables)
  assert outputs[resnet.BLOCK_GROUP4].dtype == tf.bfloat16
  for key in (resnet.FINAL_AVG_POOL, simclr_model.PROJ_HEAD_INPUT,
              simclr_model.PROJ_HEAD_OUTPUT, simclr_model.LOGITS_SUP):
    assert outputs[key].dtype == tf.float32, key


def test_loss_scaling_only_for_float16_and_unscales_exactly():
  def lars():
    return optimizer_lib.build_optimizer("lars", 0.1, momentum=0.9,
                                         weight_decay=0.0, eeta=0.001)
  assert precision.wrap_optimizer(lars(), "float32").__class__.__name__ == (
      "LARS")
  assert not isinstance(precision.wrap_optimizer(lars(), "mixed_bfloat16"),
                        keras.mixed_precision.LossScaleOptimizer)
  scaled_optimizer = precision.wrap_optimizer(lars(), "mixed_float16")
  assert isinstance(scaled_optimizer, keras.mixed_precision.LossScaleOptimizer)
  loss = tf.constant(3.0)
  scale = float(scaled_optimizer.loss_scale)
  assert scale > 1
  assert float(precision.scale_loss(scaled_optimizer, loss)) == 3.0 * scale
  gradients = [tf.constant([2.0 * scale]), None]
  unscaled = precision.unscale_gradients(scaled_optimizer, gradients)
  assert unscaled[1] is None
  np.testing.assert_allclose(unscaled[0].numpy(), [2.0])


def _first_losses(tmp_path, name, precision_name):
  lines = []
  cfg = tiny_config(tmp_path / name, train_steps=4, checkpoint_steps=4,
                    steps_per_loop=1, mode="train", log_every_steps=1,
                    precision=precision_name, train_batch_size=32)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                          use_blur=False))
  experiment.run_experiment(cfg, print_fn=lines.append)
  losses = []
  for line in lines:
    if line.startswith("step "):
      fields = dict(part.strip().rsplit(" ", 1) for part in
                    line.split("|")[3:])
      losses.append(float(fields["contrast_loss"]))
  return np.array(losses)


def test_mixed_bfloat16_losses_track_float32_over_the_first_steps(tmp_path):
  float32 = _first_losses(tmp_path, "f32", "float32")
  bfloat16 = _first_losses(tmp_path, "bf16", "mixed_bfloat16")
  assert len(float32) == len(bfloat16) == 4
  assert np.all(np.isfinite(bfloat16))
  relative = np.abs(bfloat16 - float32) / float32
  # bfloat16 keeps 8 mantissa bits; the trajectories drift apart a little.
  assert relative.max() < 0.08 and relative.mean() < 0.04, relative
  # bfloat16 really ran: its losses are not float32's to the last bit.
  assert not np.array_equal(bfloat16, float32)


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 avx512f", None),
    ("fpu avx512f avx512_bf16", "CPU avx512_bf16"),
    ("fpu avx512_bf16 amx_tile amx_bf16", "CPU amx_bf16+avx512_bf16"),
])
def test_native_bfloat16_reads_the_cpu_flags(tmp_path, flags, expected):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Test CPU\n"
                     f"flags\t\t: {flags}\n\nprocessor\t: 1\n")
  assert precision.native_bfloat16(str(cpuinfo)) == expected
  assert precision.native_bfloat16(str(tmp_path / "missing")) is None


def test_describe_precision_recommends_bfloat16_only_where_native():
  assert "usually trains faster" in precision.describe_precision(
      "float32", native="CPU amx_bf16")
  assert precision.describe_precision("float32", native="") == (
      "precision float32")
  assert "emulated" in precision.describe_precision("mixed_bfloat16",
                                                    native="")
  assert precision.describe_precision("mixed_bfloat16", use_tpu=True) == (
      "precision mixed_bfloat16 (native bfloat16: TPU)")
