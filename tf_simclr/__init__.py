"""tf_simclr: SimCLRv2 in TensorFlow 2 / tf_keras."""

__version__ = "0.1.0"


def load(path, *, image_size=None, **architecture):
  """Builds a tf_simclr model holding the weights stored at `path`.

  `path` is a tf_simclr model_dir or checkpoint, or a SavedModel or checkpoint
  of the original SimCLR code. See `tf_simclr.models.loading.load`.
  """
  from tf_simclr.models import loading  # TF import deferred.
  return loading.load(path, image_size=image_size, **architecture)
