"""NND (DESIGN.md section 5): the shared network with every conv layer gated per input, trained with the
task CE plus the sparsity, information and alignment terms (:class:`picnn_ext.nn.NNDLoss`).

The network is the one STD and PICNN train (backbone, then the interpreted 3x3 conv with K filters, then
GAP + Linear), decoupled: the backbone's convs and the interpreted layer each get a controller, so the
MIS reads the same K filters as for the other methods (gated, as the network uses them).

Per evaluation, the share of open gates over all gates (``open``) and of each layer (``open_l1``,
``open_l2``, ...) is part of the evaluation result: ``eval_outputs`` sums it over the batch's samples on the
device, the evaluation sums the batches and reads the mean once, and ``eval_metrics`` names it. The method
object keeps no state between the two.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ...models.decouple import DecoupledNet, decouple
from ...nn.interpreted import interpreted_layer
from .base import EvalOutputs, TrainingMethod, build_backbone

__all__ = ["NNDMethod"]


class NNDMethod(TrainingMethod):
    name = "nnd"
    help = ("network decoupling: every conv layer gated per input by a controller; CE plus the sparsity, "
            "information and alignment terms")

    def build_model(self, in_channels: int, num_classes: int, image_size) -> DecoupledNet:
        backbone, width = build_backbone(self.config, in_channels, image_size)
        activation = None if self.config.interpreted_activation == "none" else self.config.interpreted_activation
        network = nn.Sequential(backbone, interpreted_layer(width, self.config.num_filters, activation=activation))
        config = self.config
        return decouple(network, num_classes, lambda_s=config.lambda_s, tau=config.tau,
                        lambda_m=config.lambda_m, lambda_k=config.lambda_k)

    def training_loss(self, net, images, targets, *, epoch, generator):
        return net(images, targets, generator=generator).loss

    def eval_outputs(self, model, images, targets, generator):
        out = model(images)  # eval mode: the deterministic gates z > 0, no draw
        # Summed over the samples: the share of all gates open, then each layer's.
        shares = [torch.cat(out.gates, dim=1).float().mean(dim=1).sum()]
        shares += [gate.float().mean(dim=1).sum() for gate in out.gates]
        return EvalOutputs({"acc1": out.logits}, out.features, 1, sums=torch.stack(shares))

    def eval_metrics(self, means: torch.Tensor) -> Dict[str, float]:
        overall, *layers = means.tolist()
        return {"open": overall, **{f"open_l{layer + 1}": share for layer, share in enumerate(layers)}}

    # The applications' hooks (picnn_ext.applications): A is the last gated layer's map, the classifier reads
    # it, and an input's calculation path is every gate of every layer (detection by path distance).
    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(images).features

    def logits_from_features(self, model: nn.Module, A: torch.Tensor) -> torch.Tensor:
        return model.classifier(A)

    def calculation_path(self, model: nn.Module, images: torch.Tensor) -> Optional[torch.Tensor]:
        return torch.cat(model(images).gates, dim=1).float()
