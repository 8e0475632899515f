"""Command-line flags of tf-simclr / run.py and their conversion into ExperimentConfig.

Installed as the package `tf_simclr.cli`, so imports here stay relative.
"""

from .config import config_from_flags
from .definitions import define_flags

__all__ = ["config_from_flags", "define_flags"]
