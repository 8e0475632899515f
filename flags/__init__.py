"""Command-line flags of run.py and their conversion into ExperimentConfig."""

from flags.config import config_from_flags, validate
from flags.definitions import define_flags

__all__ = ["config_from_flags", "define_flags", "validate"]
