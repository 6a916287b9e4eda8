"""Backbones, the conversion of image classifiers into PICNNs, and their decoupling (NND)."""
from .convert import convert
from .decouple import DecoupledNet, NNDOutput, decouple
from .small_cnn import SmallConvNet

__all__ = ["convert", "decouple", "DecoupledNet", "NNDOutput", "SmallConvNet"]
