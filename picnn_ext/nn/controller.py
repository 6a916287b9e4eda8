"""NND's architecture controller (DESIGN.md section 5): one gate per (sample, output filter) of a conv layer,
decided from the layer's input.

    controller = ArchitectureController(in_channels, out_channels)
    gate = controller(layer_input)                          # (B, out_channels)
    gated_output, gate = controller.gate_output(layer_input, layer_output, generator=g)

``u = GAP(layer_input)``, ``z = W2 relu(W1 u + b1) + b2``. In training the gate is a hard Bernoulli draw
with ``p = sigmoid(z)`` and a straight-through gradient to ``p`` (``picnn_ext.ops.bernoulli_gate``); in eval
mode it is ``z > 0``, with no randomness. Because the gate is known before the layer's conv runs, a gated-off
filter need not be computed at inference (:meth:`gates_of_map` serves the skipping path, which reads only
the open input channels).

The authors (Li et al., arXiv 1906.01166) binarise ``z`` with *improved semantic hashing*: in training,
Gaussian noise is added to ``z``, and with probability 1/2 per step the gate is the hard threshold of the
noisy ``z`` (gradient passed straight through) and otherwise the soft ``saturating sigmoid``; at inference the
threshold ``z > 0``. Here the training gate is one exact Bernoulli draw of ``sigmoid(z)`` with the
straight-through estimator, which is the gate the fused op draws: the forward value is always hard (0 or 1),
the gradient reaches ``z`` through ``p`` alone, and the inference threshold ``z > 0`` is the gate's mode
(``p > 1/2``), the same rule as the authors'.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import bernoulli_gate, controller_gates

__all__ = ["ArchitectureController"]


class ArchitectureController(nn.Module):
    """The gate of a conv layer's ``out_channels`` filters, read off the layer's input.

    Args:
        in_channels: channels of the layer's input (the conv's ``in_channels``).
        out_channels: filters of the layer, one gate each.
        reduction: the hidden width is ``max(1, out_channels // reduction)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, reduction: int = 4):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("reduction", reduction)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ArchitectureController: {name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        hidden = max(1, out_channels // reduction)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors' start: W1 = 0 and b1 = 1 make the hidden units 1 for every input, so every layer
        # starts with the same input-independent gates z = W2 1 + 1, mostly open (p = sigmoid(z)).
        nn.init.zeros_(self.fc1.weight)
        nn.init.ones_(self.fc1.bias)
        nn.init.kaiming_normal_(self.fc2.weight)
        nn.init.ones_(self.fc2.bias)

    def _check_input(self, layer_input: torch.Tensor) -> None:
        if not isinstance(layer_input, torch.Tensor) or layer_input.dim() < 2:
            raise ValueError(f"ArchitectureController: layer_input must be a (B, C, *spatial) tensor, got "
                             f"{getattr(layer_input, 'shape', type(layer_input).__name__)}")
        if layer_input.shape[1] != self.in_channels:
            raise ValueError(f"ArchitectureController: layer_input has {layer_input.shape[1]} channels on dim 1, "
                             f"expected in_channels = {self.in_channels}")

    def logits_from_pooled(self, u: torch.Tensor, in_index: torch.Tensor | None = None) -> torch.Tensor:
        """z from the pooled input ``u`` (B, in_channels), or from its open channels alone: ``u`` (B, n) holds
        the channels ``in_index`` (the others are zero, so their columns of W1 contribute nothing)."""
        weight1 = self.fc1.weight if in_index is None else self.fc1.weight.index_select(1, in_index)
        hidden = F.relu(F.linear(u, weight1, self.fc1.bias))
        return self.fc2(hidden)

    def gates_of_map(self, x: torch.Tensor, in_index: torch.Tensor | None = None, *,
                     weight1: torch.Tensor | None = None):
        """``(z, open, mixed)`` from the layer's input map itself, (B, n, *spatial) holding the channels
        ``in_index`` (None: all), or from its pooled (B, n), in one fused call (``picnn_ext.ops.controller_gates``):
        the skipping path's controller. ``open`` (out_channels,) uint8 marks the filters some sample opens,
        ``mixed`` whether a sample closes one that another opens. ``weight1``: fc1's columns of those
        channels, when the caller keeps them. The parameters are read from the modules' dicts: this runs once
        per layer between two convs, from cold caches, where each nn.Module attribute lookup costs
        microseconds."""
        fc1, fc2 = self._modules["fc1"], self._modules["fc2"]
        p1, p2 = fc1._parameters, fc2._parameters
        if len(p1) != 2 or len(p2) != 2:  # a parametrized (or otherwise rebuilt) Linear: its attributes
            p1, p2 = {"weight": fc1.weight, "bias": fc1.bias}, {"weight": fc2.weight, "bias": fc2.bias}
        if weight1 is None:
            weight1 = p1["weight"] if in_index is None else p1["weight"].index_select(1, in_index)
        return controller_gates(x, weight1, p1["bias"], p2["weight"], p2["bias"])

    def logits(self, layer_input: torch.Tensor) -> torch.Tensor:
        """z, (B, out_channels)."""
        self._check_input(layer_input)
        u = layer_input.mean(dim=tuple(range(2, layer_input.dim()))) if layer_input.dim() > 2 else layer_input
        return self.logits_from_pooled(u)

    def forward(self, layer_input: torch.Tensor, *, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """The gate (B, out_channels): in training a hard draw with a straight-through gradient to
        p = sigmoid(z); in eval mode ``z > 0`` as 0/1 floats."""
        z = self.logits(layer_input)
        if not self.training:
            return (z > 0).to(z.dtype)
        p = torch.sigmoid(z)
        _, mask = bernoulli_gate(p.detach(), p, noise=noise, generator=generator)
        return straight_through(mask, p)

    def gate_output(self, layer_input: torch.Tensor, layer_output: torch.Tensor, *,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None):
        """(gated layer_output, gate). In training the full map goes through one fused ``bernoulli_gate``
        call, which draws the mask and multiplies it in; the returned gate carries the same draw with the
        straight-through gradient to p, for the losses that read the gates. ``noise``: (B, out_channels)
        uniforms that make the draw explicit (mask = noise < p)."""
        z = self.logits(layer_input)
        if layer_output.dim() < 2 or layer_output.shape[:2] != z.shape:
            raise ValueError(f"ArchitectureController: layer_output must be (B, {self.out_channels}, *spatial) "
                             f"with the batch of layer_input ({z.shape[0]}), got {tuple(layer_output.shape)}")
        if not self.training:
            gate = (z > 0).to(layer_output.dtype)
            gated, _ = bernoulli_gate(layer_output, gate, hard=False)
            return gated, gate
        p = torch.sigmoid(z).to(layer_output.dtype)
        gated, mask = bernoulli_gate(layer_output, p, noise=noise, generator=generator)
        return gated, straight_through(mask, p)


def straight_through(mask: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Forward value ``mask``, gradient the identity to ``p`` (DESIGN.md section 1)."""
    return p + (mask.to(p.dtype) - p).detach()
