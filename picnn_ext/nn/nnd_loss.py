"""NND's training objective (DESIGN.md section 5), with the authors' CIFAR ResNet-56 weights as defaults.

    loss = CE(logits, y)
         + lambda_s * sum_l | mean_b ||g_l[b]||_1 - tau * K_l |          (sparsity)
         + lambda_m * sum_l CE(V_l g_l, y)                                (information)
         + lambda_k * sum_l mean_b KL(softmax(a_l[b]) || softmax(g_l[b]))  (alignment)

``g_l`` (B, K_l) is layer l's gate (hard, straight-through to p), ``a_l`` (B, K_l) the global average of
the layer's output before the gate, ``V_l`` a bias-free ``Linear(K_l, C)``: the information term is a
variational lower bound on the mutual information between a layer's gates and the label. The sums run over
the gated layers, as in the paper's objective; with ``tau = 0`` the sparsity term is the gates' mean L1 norm.
Nothing is detached: the alignment term pulls the gates towards the layer's response and the layer's
response towards its gates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NNDLoss", "NNDLossParts", "alignment_loss", "information_loss", "sparsity_loss"]

LAMBDA_S = 1.5e-4
TAU = 0.0
LAMBDA_M = 0.01
LAMBDA_K = 1.0


def sparsity_loss(gates: Sequence[torch.Tensor], tau: float = TAU) -> torch.Tensor:
    """sum over layers of |mean over the batch of the gate's L1 norm - tau * K|."""
    return sum((gate.abs().sum(dim=1).mean() - tau * gate.shape[1]).abs() for gate in gates)


def information_loss(gates: Sequence[torch.Tensor], targets: torch.Tensor, classifiers: Sequence[nn.Module]):
    """sum over layers of the cross-entropy of a linear classifier reading the layer's gates."""
    return sum(F.cross_entropy(classifier(gate), targets) for gate, classifier in zip(gates, classifiers))


def alignment_loss(pooled: Sequence[torch.Tensor], gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum over layers of the batch mean of KL(softmax(a_l) || softmax(g_l)), over the K_l filters."""
    total = 0.0
    for a, gate in zip(pooled, gates):
        # at least float32: half-precision softmaxes lose the small gaps between the filters' responses
        dtype = torch.promote_types(torch.promote_types(a.dtype, gate.dtype), torch.float32)
        log_target = F.log_softmax(a.to(dtype), dim=1)
        total = total + F.kl_div(F.log_softmax(gate.to(dtype), dim=1), log_target, reduction="batchmean",
                                 log_target=True)
    return total


@dataclass
class NNDLossParts:
    task: torch.Tensor
    sparsity: torch.Tensor
    information: torch.Tensor
    alignment: torch.Tensor
    total: torch.Tensor

    def as_dict(self) -> Dict[str, torch.Tensor]:
        return {"task": self.task, "sparsity": self.sparsity, "information": self.information,
                "alignment": self.alignment, "total": self.total}


class NNDLoss(nn.Module):
    """The NND objective with its information classifiers (one bias-free ``Linear(K_l, C)`` per layer).

    Args:
        widths: K_l of each gated layer, in order.
        num_classes: C.
        lambda_s, tau, lambda_m, lambda_k: the weights of the module's docstring.
    """

    def __init__(self, widths: Sequence[int], num_classes: int, *, lambda_s: float = LAMBDA_S, tau: float = TAU,
                 lambda_m: float = LAMBDA_M, lambda_k: float = LAMBDA_K):
        super().__init__()
        if not widths:
            raise ValueError("NNDLoss: widths must name at least one gated layer, got none")
        if num_classes < 1:
            raise ValueError(f"NNDLoss: num_classes must be at least 1, got {num_classes}")
        for name, value in (("lambda_s", lambda_s), ("tau", tau), ("lambda_m", lambda_m), ("lambda_k", lambda_k)):
            if not value >= 0:
                raise ValueError(f"NNDLoss: {name} must be >= 0, got {value}")
        self.widths: List[int] = [int(width) for width in widths]
        self.lambda_s, self.tau, self.lambda_m, self.lambda_k = lambda_s, tau, lambda_m, lambda_k
        self.info_classifiers = nn.ModuleList(nn.Linear(width, num_classes, bias=False) for width in self.widths)

    def forward(self, logits: torch.Tensor, gates: Sequence[torch.Tensor], pooled: Sequence[torch.Tensor],
                targets: torch.Tensor) -> NNDLossParts:
        if len(gates) != len(self.widths) or len(pooled) != len(self.widths):
            raise ValueError(f"NNDLoss: expected {len(self.widths)} gates and pooled outputs, got {len(gates)} "
                             f"and {len(pooled)}")
        for layer, (gate, width) in enumerate(zip(gates, self.widths)):
            if gate.shape[1:] != (width,):
                raise ValueError(f"NNDLoss: gates[{layer}] must be (B, {width}), got {tuple(gate.shape)}")
        task = F.cross_entropy(logits, targets)
        sparsity = sparsity_loss(gates, self.tau)
        information = information_loss(gates, targets, self.info_classifiers)
        alignment = alignment_loss(pooled, gates)
        return NNDLossParts(task, sparsity, information, alignment,
                            self.combine(task, sparsity, information, alignment))

    def combine(self, task, sparsity, information, alignment, *, lambda_s: float | None = None):
        """The weighted sum of the four terms; ``lambda_s`` (default: the module's) lets a training recipe
        schedule the sparsity weight per epoch (``picnn_ext.train.methods.nnd``) without a second formula."""
        lambda_s = self.lambda_s if lambda_s is None else lambda_s
        return task + lambda_s * sparsity + self.lambda_m * information + self.lambda_k * alignment
