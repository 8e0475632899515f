"""Backbone, heads and the SimCLR model."""

from tf_simclr.models.builder import build_model
from tf_simclr.models.heads import ProjectionHead
from tf_simclr.models.heads import SupervisedHead
from tf_simclr.models.resnet import ResNet
from tf_simclr.models.simclr_model import SimCLRModel

__all__ = [
    "build_model", "ProjectionHead", "SupervisedHead", "ResNet",
    "SimCLRModel",
]
