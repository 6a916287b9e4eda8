"""Backbones and the conversion of image classifiers into PICNNs."""
from .convert import convert
from .small_cnn import SmallConvNet

__all__ = ["convert", "SmallConvNet"]
