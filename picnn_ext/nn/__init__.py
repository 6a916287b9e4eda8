"""Modules of picnn_ext: the PICNN head and the PICNN wrapper."""
from .interpreted import InterpretedNet, interpreted_layer
from .picnn import PICNN
from .picnn_head import PICNNHead, PICNNNoise, PICNNOutput, picnn_loss, select_rows_st

__all__ = ["InterpretedNet", "interpreted_layer", "PICNN", "PICNNHead", "PICNNNoise", "PICNNOutput", "picnn_loss", "select_rows_st"]
