"""tf_simclr: SimCLRv2 in TensorFlow 2 / tf_keras."""

__version__ = "0.1.0"


def load_reference_saved_model(path, **architecture):
  """Builds a tf_simclr model holding the weights of an original-code SavedModel.

  See `tf_simclr.export.reference_import.load_reference_saved_model`.
  """
  from tf_simclr.models import reference_import  # TF import deferred.
  return reference_import.load_reference_saved_model(path, **architecture)
