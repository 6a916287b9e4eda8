"""NND (DESIGN.md section 5): the shared network with every conv layer gated per input, trained with the
task CE plus the sparsity, information and alignment terms (:class:`picnn_ext.nn.NNDLoss`).

The network is the one STD and PICNN train (backbone, then the interpreted 3x3 conv with K filters, then
GAP + Linear), decoupled: the backbone's convs and the interpreted layer each get a controller, so the
MIS reads the same K filters as for the other methods (gated, as the network uses them).

Per evaluation, the share of open gates of each layer (``open_l1``, ``open_l2``, ...; ``open`` over all
gates) is summed on the device batch by batch in ``eval_outputs`` and read once by ``model_metrics``,
which the trainer calls right after each evaluation.
"""
from __future__ import annotations

from typing import Dict, List, Optional

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

    def __init__(self, config):
        super().__init__(config)
        self._open_sums: Optional[torch.Tensor] = None  # (L,) sum over samples of each layer's open share
        self._count: Optional[torch.Tensor] = None
        self._widths: List[int] = []
        self._read = False

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
        shares = torch.stack([gate.float().mean(dim=1).sum() for gate in out.gates])
        if self._read or self._open_sums is None:  # the first batch of a new evaluation
            self._open_sums, self._count = torch.zeros_like(shares), torch.zeros((), device=shares.device)
            self._widths, self._read = [gate.shape[1] for gate in out.gates], False
        self._open_sums += shares
        self._count += images.shape[0]
        return EvalOutputs({"acc1": out.logits}, out.features, 1)

    # The applications' hooks (picnn_ext.applications): A is the last gated layer's map, the classifier reads
    # it, and an input's calculation path is every gate of every layer (detection by path distance).
    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(images).features

    def logits_from_features(self, model: nn.Module, A: torch.Tensor) -> torch.Tensor:
        return model.classifier(A)

    def calculation_path(self, model: nn.Module, images: torch.Tensor) -> Optional[torch.Tensor]:
        return torch.cat(model(images).gates, dim=1).float()

    def model_metrics(self, model: nn.Module) -> Dict[str, float]:
        if self._open_sums is None:
            return {}
        self._read = True
        shares = (self._open_sums / self._count.clamp(min=1)).tolist()  # the one read
        widths = self._widths
        metrics = {"open": sum(share * width for share, width in zip(shares, widths)) / sum(widths)}
        metrics.update({f"open_l{layer + 1}": share for layer, share in enumerate(shares)})
        return metrics
