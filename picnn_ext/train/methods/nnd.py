"""NND (DESIGN.md section 5): the shared network with every conv layer gated per input, trained with the
task CE plus the sparsity, information and alignment terms (:class:`picnn_ext.nn.NNDLoss`).

The training recipe (the config's ``nnd_*`` options, all off by default): the sparsity weight of epoch e
(from 1) is :func:`sparsity_weight` (0 during the warm-up, then a linear ramp to ``lambda_s``), and the last
``nnd_finetune`` epochs train with the inference gates (``z > 0``), so that the convs and the batch norms'
running statistics, which the random training draws would leave fitted to other paths, match what the
skipping path computes; the controllers get no gradient then and stay as they are. The controllers may
have a learning rate of their own (``nnd_controller_lr``).

The network is the one STD and PICNN train (backbone, then the interpreted 3x3 conv with K filters, then
GAP + Linear), decoupled: the backbone's convs and the interpreted layer each get a controller, so the
MIS reads the same K filters as for the other methods (gated, as the network uses them).

Per evaluation, the share of open gates over all gates (``open``) and of each layer (``open_l1``,
``open_l2``, ...) is part of the evaluation result: ``eval_outputs`` sums it over the batch's samples on the
device, the evaluation sums the batches and reads the mean once, and ``eval_metrics`` names it. The method
object keeps no state between the two.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ...models.decouple import DecoupledNet, decouple
from ...nn.controller import ArchitectureController
from ...nn.interpreted import interpreted_layer
from .base import EvalOutputs, TrainingMethod, build_backbone

__all__ = ["NNDMethod", "sparsity_weight"]


def sparsity_weight(epoch: int, lambda_s: float, warmup: int = 0, ramp: int = 0) -> float:
    """lambda_s of epoch ``epoch`` (from 1): 0 for the first ``warmup`` epochs, then rising linearly over
    ``ramp`` epochs (``lambda_s / ramp`` in the first epoch after the warm-up) and ``lambda_s`` from then on."""
    if epoch <= warmup:
        return 0.0
    if ramp > 0:
        return lambda_s * min(1.0, (epoch - warmup) / ramp)
    return lambda_s


def controllers(model: nn.Module) -> List[ArchitectureController]:
    return [module for module in model.modules() if isinstance(module, ArchitectureController)]


class NNDMethod(TrainingMethod):
    name = "nnd"
    help = ("network decoupling: every conv layer gated per input by a controller; CE plus the sparsity, "
            "information and alignment terms")

    def __init__(self, config):
        super().__init__(config)
        # In the fine-tuning epochs the controllers take no part in the loss's gradient.
        self.ddp_find_unused_parameters = config.nnd_finetune > 0

    def build_model(self, in_channels: int, num_classes: int, image_size) -> DecoupledNet:
        backbone, width = build_backbone(self.config, in_channels, image_size)
        activation = None if self.config.interpreted_activation == "none" else self.config.interpreted_activation
        network = nn.Sequential(backbone, interpreted_layer(width, self.config.num_filters, activation=activation))
        config = self.config
        return decouple(network, num_classes, lambda_s=config.lambda_s, tau=config.tau,
                        lambda_m=config.lambda_m, lambda_k=config.lambda_k)

    @property
    def has_recipe(self) -> bool:
        config = self.config
        return bool(config.nnd_warmup or config.nnd_ramp or config.nnd_finetune)

    def sparsity_weight(self, epoch: int) -> float:
        config = self.config
        return sparsity_weight(epoch, config.lambda_s, config.nnd_warmup, config.nnd_ramp)

    def finetune_epoch(self, epoch: int) -> bool:
        return epoch > self.config.epochs - self.config.nnd_finetune

    def parameter_groups(self, model: nn.Module) -> List[dict]:
        if self.config.nnd_controller_lr is None:
            return super().parameter_groups(model)
        own = {id(parameter) for controller in controllers(model) for parameter in controller.parameters()}
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        return [{"params": [parameter for parameter in trainable if id(parameter) not in own]},
                {"params": [parameter for parameter in trainable if id(parameter) in own],
                 "lr": self.config.nnd_controller_lr}]

    def training_loss(self, net, images, targets, *, epoch, generator):
        if not self.has_recipe:
            return net(images, targets, generator=generator).loss
        model = getattr(net, "module", net)  # the bare DecoupledNet under DDP
        if self.finetune_epoch(epoch):
            # The trainer puts the whole network in training mode each epoch; the controllers go back to
            # their inference rule here (a flag per module, no computation).
            for controller in controllers(model):
                controller.train(False)
        parts = net(images, targets, generator=generator).loss_parts
        return model.criterion.combine(parts.task, parts.sparsity, parts.information, parts.alignment,
                                       lambda_s=self.sparsity_weight(epoch))

    def epoch_note(self, epoch: int) -> str:
        if not self.has_recipe:
            return ""
        note = f"lambda_s {self.sparsity_weight(epoch):.3g}"
        return f"{note}, inference gates" if self.finetune_epoch(epoch) else note

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
