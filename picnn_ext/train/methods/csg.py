"""CSG (DESIGN.md section 4): STD epochs and CSG epochs on the same network, the gates projected after each
CSG step.

The authors' schedule: STD epochs during a warm-up, then every ``csg_period``-th epoch a CSG epoch (the
others stay STD), so that the classifier keeps serving the ungated features that inference reads while the
gates make the filters class-specific. Epoch e (counted from 1) is a CSG epoch when
``e > csg_warmup and (e - csg_warmup) % csg_period == 0``.

G has a learning rate of its own (``gate_lr``, default 1e-2, see the config) and no weight decay: its regulariser is the
L1 hinge of the CSG loss, and a decay would pull every gate towards 0 in the STD epochs too, where G gets
no other gradient.
"""
from __future__ import annotations

from typing import Dict, List

from torch import nn

from ...nn import CSG
from .base import EvalOutputs, TrainingMethod, build_network

__all__ = ["CSGMethod", "is_csg_epoch"]


def is_csg_epoch(epoch: int, warmup: int, period: int) -> bool:
    """Whether epoch ``epoch`` (from 1) trains the CSG path under the authors' schedule."""
    return epoch > warmup and (epoch - warmup) % period == 0


class CSGMethod(TrainingMethod):
    name = "csg"
    help = "class-specific gates: STD epochs and, after a warm-up, a CSG epoch every csg_period-th epoch"
    # acc1: the STD path (inference); acc_gate: the CSG path with the label's gates G[y] (a diagnostic).
    accuracy_names = ("acc1", "acc_gate")
    # G gets no gradient in the STD epochs.
    ddp_find_unused_parameters = True

    def build_model(self, in_channels: int, num_classes: int, image_size) -> CSG:
        config = self.config
        return build_network(config, CSG, in_channels, num_classes, image_size, init=config.csg_init,
                             density=config.csg_density, lam_reg=config.csg_lam_reg)

    def parameter_groups(self, model: nn.Module) -> List[dict]:
        G = model.head.G
        others = [parameter for parameter in model.parameters() if parameter.requires_grad and parameter is not G]
        gate_lr = self.config.gate_lr if self.config.gate_lr is not None else self.config.lr
        return [{"params": others}, {"params": [G], "lr": gate_lr, "weight_decay": 0.0}]

    def csg_epoch(self, epoch: int) -> bool:
        return is_csg_epoch(epoch, self.config.csg_warmup, self.config.csg_period)

    def training_loss(self, net, images, targets, *, epoch, generator):
        return net(images, targets, csg=self.csg_epoch(epoch)).loss

    def after_step(self, model: nn.Module, *, epoch: int) -> None:
        if self.csg_epoch(epoch):
            model.head.project_()

    def eval_outputs(self, model, images, targets, generator):
        A = model.features(images)
        out = model.head(A, targets, csg=True)
        return EvalOutputs({"acc1": out.logits, "acc_gate": out.gated_logits}, A, model.head.channel_dim)

    def model_metrics(self, model: nn.Module) -> Dict[str, float]:
        return {"density": float(model.head.density())}

    def filter_class_matrix(self, model):
        return "G", model.head.G.detach()

    def class_filter_weights(self, G):
        return G.clamp(0.0, 1.0)

    def epoch_note(self, epoch: int) -> str:
        return "csg" if self.csg_epoch(epoch) else "std"
