"""Errors the command line reports as one line (importing this is TF-free)."""


class NonFiniteLossError(RuntimeError):
  """Training produced NaN or Inf; the last good checkpoint is kept."""


class PreemptedError(RuntimeError):
  """SIGTERM arrived; a checkpoint of the current step was saved first."""
