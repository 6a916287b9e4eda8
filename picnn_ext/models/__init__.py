"""Backbones, the conversion of image classifiers into PICNN and CSG networks, their decoupling (NND), and
models by name (``create_model``)."""
from .convert import convert
from .decouple import DecoupledNet, NNDOutput, decouple
from .registry import available_models, create_model
from .small_cnn import SmallConvNet

__all__ = ["DecoupledNet", "NNDOutput", "SmallConvNet", "available_models", "convert", "create_model", "decouple"]
