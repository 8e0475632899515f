"""Test set-up shared by the whole suite.

Two logical CPU devices are configured before TensorFlow touches a device, so
cross-replica tests can run MirroredStrategy on this CPU-only machine.
"""

import itertools
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(
    os.environ.get("TF_SIMCLR_SHARED", REPO_ROOT.parent / "shared"))
REFERENCE_DIR = SHARED_DIR / "reference"
CIFAR10_DIR = SHARED_DIR / "data" / "cifar10"


@pytest.fixture
def reference_dir():
  if not (REFERENCE_DIR / "SPEC.md").exists():
    pytest.skip(f"reference material not found at {REFERENCE_DIR}")
  return REFERENCE_DIR


@pytest.fixture
def r18_fixture_dir(reference_dir):
  path = reference_dir / "fixtures" / "r18_cifar"
  if not (path / "saved_model").exists():
    pytest.skip(f"reference fixture not found at {path}")
  return path


@pytest.fixture
def cifar10_dir():
  if not (CIFAR10_DIR / "train").exists():
    pytest.skip(f"CIFAR-10 image folder not found at {CIFAR10_DIR}")
  return CIFAR10_DIR


_collective_key_bases = itertools.count(1_000_000, 1_000_000)
_original_mirrored_init = tf.distribute.MirroredStrategy.__init__


def _mirrored_init_with_fresh_keys(self, *args, **kwargs):
  # Every MirroredStrategy in a process starts from the same collective keys
  # and the runtime remembers each collective instance's shape, so a second
  # strategy in one test process collides with the first ("Shape mismatch in
  # the collective instance"). A fresh key range per strategy (an attribute
  # TF keeps for tests) keeps tests independent; one process of run.py only
  # ever builds one strategy.
  type(self)._collective_key_base = next(_collective_key_bases)
  _original_mirrored_init(self, *args, **kwargs)


tf.distribute.MirroredStrategy.__init__ = _mirrored_init_with_fresh_keys


@pytest.fixture
def two_cpu_strategy():
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


# The export tests (test_export.py, test_hub.py) share one tiny model and the
# outputs its SavedModels must carry.
EXPORT_IMAGE_SIZE = 16
EXPORT_OUTPUT_KEYS = ("initial_conv", "initial_max_pool", "block_group1",
                      "block_group2", "block_group3", "block_group4",
                      "final_avg_pool", "proj_head_input", "proj_head_output",
                      "logits_sup")


def tiny_export_model(num_classes: int, train_mode: str = "finetune"):
  """A built R18 at width 0.125, seeded, with a head of `num_classes`."""
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  from tf_simclr import configs  # pylint: disable=g-import-not-at-top
  from tf_simclr.models import builder  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = builder.build_model(
      configs.ModelConfig(width_multiplier=0.125, global_bn=True),
      configs.HeadConfig(num_classes=num_classes,
                         lineareval_while_pretraining=False),
      train_mode)
  model(tf.zeros([1, EXPORT_IMAGE_SIZE, EXPORT_IMAGE_SIZE, 3]),
        training=False)
  return model


def randomise_batch_norm(model, seed: int, affine: bool = True) -> None:
  """Moves BN statistics (and gamma/beta if `affine`) away from (0, 1), so
  inference and training mode give different outputs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  for layer in model.submodules:
    if not isinstance(layer, keras.layers.BatchNormalization):
      continue
    shape = layer.moving_mean.shape
    layer.moving_mean.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
    layer.moving_variance.assign(
        rng.uniform(0.5, 2.0, shape).astype(np.float32))
    if affine and layer.gamma is not None:
      layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    if affine and layer.beta is not None:
      layer.beta.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))
