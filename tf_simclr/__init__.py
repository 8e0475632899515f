"""tf_simclr: SimCLRv2 in TensorFlow 2 / tf_keras.

  import tf_simclr
  cfg = tf_simclr.presets.get("digits_cpu").config(train_steps=20,
                                                   model_dir="/tmp/run")
  results = tf_simclr.run(cfg)
"""

from tf_simclr import presets
from tf_simclr.configs import ExperimentConfig

__version__ = "0.1.0"

__all__ = ["ExperimentConfig", "load", "presets", "run"]


def run(config: ExperimentConfig, print_fn=print) -> dict:
  """Runs one experiment (train, eval, export: `config.train.mode`).

  Checks that the config can run first (a ValueError naming the flag), then
  imports TensorFlow.

  Returns:
    The result dict, also written to `model_dir/result.json` by evaluation.
  """
  if not isinstance(config, ExperimentConfig):
    raise ValueError("config must be a tf_simclr.ExperimentConfig, got "
                     f"{type(config).__name__}")
  config.validate()
  note = presets.dataset_note(config)
  if note:
    print_fn(note)
  from tf_simclr.training import experiment  # TF import deferred.
  return experiment.run_experiment(config, print_fn=print_fn)


def load(path, *, image_size=None, **architecture):
  """Builds a tf_simclr model holding the weights stored at `path`.

  `path` is a tf_simclr model_dir or checkpoint, or a SavedModel or checkpoint
  of the original SimCLR code. See `tf_simclr.models.loading.load`.
  """
  from tf_simclr.models import loading  # TF import deferred.
  return loading.load(path, image_size=image_size, **architecture)
