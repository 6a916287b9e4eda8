"""Modules of picnn_ext: the PICNN head and the PICNN wrapper."""
from .picnn import PICNN
from .picnn_head import PICNNHead, PICNNNoise, PICNNOutput, picnn_loss, select_rows_st

__all__ = ["PICNN", "PICNNHead", "PICNNNoise", "PICNNOutput", "picnn_loss", "select_rows_st"]
