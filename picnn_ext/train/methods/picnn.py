"""STD and PICNN (DESIGN.md section 3): the same network, trained with CE(l1) or with the PICNN loss.

STD never runs the interpretation pathway, so ``theta`` gets no gradient and stays at its initial value:
its ACC2 and ACC3 read a random filter assignment, the baseline against which PICNN's are read.
"""
from __future__ import annotations

import torch
from torch import nn

from ...nn import PICNN
from .base import EvalOutputs, TrainingMethod, build_network

__all__ = ["PICNNMethod", "STDMethod"]


class PICNNMethod(TrainingMethod):
    name = "picnn"
    help = "CE(l1) plus lam times the CE of the interpretation pathway on the positive samples"
    accuracy_names = ("acc1", "acc2", "acc3")
    # The pathways of the PICNN loss run in training.
    pathways = True

    def build_model(self, in_channels: int, num_classes: int, image_size) -> PICNN:
        return build_network(self.config, PICNN, in_channels, num_classes, image_size, lam=self.config.lam)

    def training_loss(self, net, images, targets, *, epoch, generator):
        return net(images, targets, pathways=self.pathways, generator=generator).loss

    def eval_outputs(self, model, images, targets, generator):
        # model.head(model.features(x)) is what model(x) computes; split here to keep A for the MIS.
        # The targets are passed because the complement pathway masks out the true class's filters.
        A = model.features(images)
        out = model.head(A, targets, pathways=True, generator=generator)
        return EvalOutputs({"acc1": out.logits, "acc2": out.interp_logits, "acc3": out.complement_logits},
                           A, model.head.channel_dim)

    def filter_class_matrix(self, model):
        return "P", model.head.P.detach()

    def class_filter_weights(self, P):
        # Each filter serves the class with the largest P in its column.
        return torch.nn.functional.one_hot(P.argmax(dim=0), P.shape[0]).T.to(P.dtype)


class STDMethod(PICNNMethod):
    name = "std"
    help = "cross-entropy on the discrimination pathway only (the baseline)"
    pathways = False

    def prepare(self, model: nn.Module) -> None:
        # theta gets no gradient; marking it frozen says so to DDP, which would otherwise wait for it.
        model.head.theta.requires_grad_(False)

    # theta never trained: P is its random start and assigns nothing; the applications rank by activation.
    trains_filter_class_matrix = False
