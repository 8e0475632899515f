"""Turns parsed absl flags into a frozen, validated ExperimentConfig.

The preset (--preset) gives every value; each flag given explicitly on the
command line overrides it. Values are checked by the config itself.
"""

from __future__ import annotations

from typing import Any

from tf_simclr import configs
from tf_simclr import presets


def parse_fractions(text: str) -> tuple[float, ...]:
  """A comma-separated list of numbers ("" = none)."""
  if not text.strip():
    return ()
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise ValueError(
        f"probe_label_fractions must be comma-separated numbers, got {text!r}"
    ) from None


def config_from_flags(flag_values: Any) -> configs.ExperimentConfig:
  """Builds the experiment config from parsed flags (`absl.flags.FLAGS`).

  The number of classes is filled in later from the data source.

  Raises:
    ValueError: on an invalid value or a conflicting combination of flags.
  """
  f = flag_values
  overrides = {name: f[name].value for name in configs.flag_fields()
               if name != "train_mode" and f[name].present}
  if "probe_label_fractions" in overrides:
    overrides["probe_label_fractions"] = parse_fractions(
        overrides["probe_label_fractions"])
  cfg = presets.get(f.preset).config(f.train_mode, **overrides)
  return cfg.validate()
