"""Modules of picnn_ext: the heads of the filter-level methods and the networks that carry them (PICNN, CSG);
NND's architecture controller and loss."""
from .controller import ArchitectureController
from .csg import CSG
from .csg_head import CSGHead, CSGOutput, csg_loss, project_gates
from .filter_head import FilterHead
from .interpreted import InterpretedNet, interpreted_layer
from .nnd_loss import NNDLoss, NNDLossParts
from .picnn import PICNN
from .picnn_head import PICNNHead, PICNNNoise, PICNNOutput, picnn_loss, select_rows_st
from .pooling import global_pool

__all__ = ["ArchitectureController", "CSG", "CSGHead", "CSGOutput", "FilterHead", "InterpretedNet", "NNDLoss", "NNDLossParts",
           "PICNN", "PICNNHead", "PICNNNoise", "PICNNOutput", "csg_loss", "global_pool", "interpreted_layer",
           "picnn_loss", "project_gates", "select_rows_st"]
