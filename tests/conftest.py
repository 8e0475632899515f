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
