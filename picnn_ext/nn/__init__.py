"""Modules of picnn_ext: the PICNN head and the PICNN wrapper; NND's controller and loss."""
from .controller import ArchitectureController
from .interpreted import InterpretedNet, interpreted_layer
from .picnn import PICNN
from .nnd_loss import NNDLoss, NNDLossParts
from .picnn_head import PICNNHead, PICNNNoise, PICNNOutput, picnn_loss, select_rows_st

__all__ = ["ArchitectureController", "NNDLoss", "NNDLossParts", "InterpretedNet", "interpreted_layer", "PICNN", "PICNNHead", "PICNNNoise", "PICNNOutput", "picnn_loss", "select_rows_st"]
