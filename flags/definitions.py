"""absl flags of the tf-simclr command (run.py), one per config field.

Each flag is generated from a field of the config dataclasses
(`tf_simclr.configs.flag_fields`: type, help text and choices); its default is
the selected preset's value for the selected stage, so `--helpfull` shows
what a run would use. Only flags given explicitly override the preset
(`flags/config.py`).
"""

from __future__ import annotations

from typing import Optional, Sequence

from absl import flags

from tf_simclr import configs
from tf_simclr import presets


def _scan(argv: Sequence[str], name: str) -> Optional[str]:
  """The last value given as --name=V or --name V in argv, before parsing."""
  value = None
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _flag_default(value):
  if isinstance(value, tuple):  # probe_label_fractions: a comma list.
    return ",".join(f"{v:g}" for v in value)
  return value


def define_flags(argv: Optional[Sequence[str]] = None) -> None:
  """Defines every tf_simclr flag once (safe to call repeatedly).

  Args:
    argv: the command line about to be parsed; its --preset and --train_mode
      (when valid) choose the defaults shown by --helpfull. Without it the
      defaults are digits_cpu pretraining. Either way a run's values come
      from the preset it names plus the flags given explicitly.
  """
  if "train_mode" in flags.FLAGS:
    return
  argv = argv or ()
  preset_name = _scan(argv, "preset")
  if preset_name not in presets.names():
    preset_name = presets.DEFAULT
  train_mode = _scan(argv, "train_mode")
  if train_mode not in configs.TRAIN_MODES:
    train_mode = "pretrain"
  values = presets.get(preset_name).values(train_mode)

  flags.DEFINE_enum(
      "preset", preset_name, presets.names(),
      "Named defaults for every stage (tf_simclr.presets); any flag given "
      "explicitly overrides the preset's value. Defaults shown here are "
      "this preset's for this --train_mode.")
  for name, field in configs.flag_fields().items():
    default = _flag_default(values[name])
    if field.choices is not None:
      flags.DEFINE_enum(name, default, field.choices, field.help)
    elif field.type is bool:
      flags.DEFINE_bool(name, default, field.help)
    elif field.type is int:
      flags.DEFINE_integer(name, default, field.help)
    elif field.type is float:
      flags.DEFINE_float(name, default, field.help)
    else:  # str, Optional[str], and comma lists (tuple fields).
      flags.DEFINE_string(name, default, field.help)
