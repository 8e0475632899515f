"""The tf-simclr command (also `python run.py`): flags in, one run, exit code.

  tf-simclr --mode=train_then_eval --train_mode=pretrain
  tf-simclr --preset=cifar10_simclr --helpfull
"""

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags as absl_flags  # noqa: E402
from absl import logging  # noqa: E402

from tf_simclr.errors import NonFiniteLossError  # noqa: E402
from tf_simclr.errors import PreemptedError  # noqa: E402

from .config import config_from_flags  # noqa: E402
from .definitions import define_flags  # noqa: E402

# Defined on import so that `app.run(main)` alone (a test's wrapper) parses
# them; --preset and --train_mode on this command line pick the defaults
# --helpfull shows.
define_flags(sys.argv)
FLAGS = absl_flags.FLAGS


# Lines of a TensorFlow error message that only say where it happened.
_CONTEXT_PREFIXES = ("graph execution error", "detected at node",
                     "traceback", "file ", "[[", "[op:", "node:")


def error_line(e: BaseException) -> str:
  """One line for a TensorFlow error: its most telling line, never empty.

  A tf.data or graph error's first line is only "Graph execution error:"; an
  `Assert` inside the graph (a corrupt image file) puts its message on an
  "assertion failed: [part] [part]" line, rendered here as "part part".
  """
  text = getattr(e, "message", None) or str(e)
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  for line in lines:
    if "assertion failed:" in line:
      parts = re.findall(r"\[([^\[\]]*)\]",
                         line.split("assertion failed:", 1)[1])
      return f"error: {' '.join(p.strip() for p in parts if p.strip())}"
  name = type(e).__name__
  if not type(e).__module__.startswith("tensorflow"):
    # Our own errors are written as one sentence, possibly wrapped.
    return f"error: {' '.join(lines)}" if lines else f"error: {name}"
  useful = [l for l in lines if not l.lower().startswith(_CONTEXT_PREFIXES)]
  detail = (useful or lines or [""])[0]
  return f"error: {name}: {detail}" if detail else f"error: {name}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    cfg = config_from_flags(FLAGS)
    # TensorFlow is imported only after the flags are known to be valid, so a
    # bad flag fails in a fraction of a second.
    import tf_simclr
    tf_simclr.run(cfg)
  except (ValueError, FileNotFoundError, NonFiniteLossError) as e:
    print(error_line(e), file=sys.stderr)
    sys.exit(1)
  except PreemptedError as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process.
  except Exception as e:  # pylint: disable=broad-except
    # TensorFlow runtime errors (an unreadable file, an exhausted resource)
    # are user-facing here: one line, no traceback.
    if not type(e).__module__.startswith("tensorflow"):
      raise
    print(error_line(e), file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)


_HELP = re.compile(r"^--?(\?|help|helpshort|helpfull|helpxml)(=.*)?$")


def _parse_flags(argv):
  try:
    return app.parse_flags_with_usage(argv)
  except SystemExit as e:
    # absl ends a requested --help/--helpfull with status 1; the help asked
    # for was shown, which is success.
    if e.code == 1 and any(_HELP.match(a) for a in argv[1:]):
      sys.exit(0)
    raise


def run() -> None:
  """Entry point of the tf-simclr console script and of run.py."""
  app.run(main, flags_parser=_parse_flags)
