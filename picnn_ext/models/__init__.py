"""Backbones, the conversion of image classifiers into PICNNs, and models by name (``create_model``)."""
from .convert import convert
from .registry import available_models, create_model
from .small_cnn import SmallConvNet

__all__ = ["available_models", "convert", "create_model", "SmallConvNet"]
