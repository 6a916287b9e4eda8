"""The gated layers of a decoupled network (NND, DESIGN.md section 5) and their skipping inference path.

A :class:`GatedConv` is a conv with its batch norm and activation, whose output is multiplied by the gate
of an :class:`~picnn_ext.nn.ArchitectureController` reading the conv's input. ResNet blocks keep their
residual sum ungated and gate the convs inside the block that are followed by BN and ReLU (the first of a
basic block, the first two of a bottleneck), as the authors do.

The skipping path (``forward_skip``) runs in eval mode: the gate is computed before the conv, and only the
open filters are computed, from only the open channels of the input. A map travels between layers in a
compact form, :class:`Compact` (the open channels' values and their indices); for a batch, the open set is
the union over its samples, and a sample's closed channels inside the union are zeroed by its gate, so
the result equals the dense gated computation.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..nn.controller import ArchitectureController
from ..ops import relu_mean_
from .skip import Compact, FoldedConv, PatternCache, run_skip

__all__ = ["Compact", "GatedBasicBlock", "GatedBottleneck", "GatedConv", "GatedResidualBlock", "PathRecorder", "run_skip"]


class PathRecorder:
    """What one forward pass of a decoupled network collects from its gated layers, in layer order: the
    gates (its calculation path), the pooled pre-gate outputs (for the alignment loss) and the last gated
    map. Also the generator of the training draws, and, when counting, the multiply-adds of the convs."""

    def __init__(self):
        self.start(None)

    def start(self, generator: Optional[torch.Generator], count_macs: bool = False) -> None:
        self.generator = generator
        self.gates: List[torch.Tensor] = []
        self.pooled: List[torch.Tensor] = []
        self.last_map: Optional[torch.Tensor] = None
        # [computed, dense] multiply-adds, per forward; None when not counting.
        self.macs: Optional[List[int]] = [0, 0] if count_macs else None

    def record(self, gate: torch.Tensor, pooled: Optional[torch.Tensor], gated_map: torch.Tensor) -> None:
        self.gates.append(gate)
        if pooled is not None:
            self.pooled.append(pooled)
        self.last_map = gated_map

    def count(self, conv: nn.Conv2d, out_channels: int, in_channels: int, output: torch.Tensor) -> None:
        if self.macs is None:
            return
        per_position = conv.kernel_size[0] * conv.kernel_size[1] * output.shape[0] * output[0, 0].numel()
        self.macs[0] += out_channels * in_channels // conv.groups * per_position
        self.macs[1] += conv.out_channels * conv.in_channels // conv.groups * per_position


class GatedConv(nn.Module):
    """conv -> bn -> act, gated per (sample, filter) by a controller that reads the conv's input."""

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.Module] = None, act: Optional[nn.Module] = None, *,
                 reduction: int = 4):
        super().__init__()
        self.conv = conv
        self.bn = bn if bn is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()
        self.controller = ArchitectureController(conv.in_channels, conv.out_channels, reduction=reduction)
        self.recorder: Optional[PathRecorder] = None
        # The skipping path's kept tensors (skip.py says why): the folded conv and its compacted weights per
        # gate pattern, fc1's columns per input pattern, the open filters' index per pattern.
        self.folded = FoldedConv(conv, self.bn)
        self._controller_columns = PatternCache()
        self._open_index = PatternCache()
        self._all_open_key = bytes([1]) * conv.out_channels  # the pattern of every filter open

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn(self.conv(x)))
        recorder = self.recorder
        gated, gate = self.controller.gate_output(x, out, generator=recorder.generator if recorder else None)
        if recorder is not None:
            recorder.record(gate, out.mean(dim=(2, 3)), gated)
        return gated

    def _activate(self, y: torch.Tensor, act: nn.Module):
        """(act(y), its means over the positions or None). A ReLU runs as ``relu_mean_``, which computes the
        means in the same pass, for the next gated layer's controller; both paths, skip and plain, run it, so
        that they differ only in what gating adds and removes."""
        if type(act) is nn.ReLU:
            return y, relu_mean_(y)
        return act(y), None

    def forward_skip(self, x: Compact, plain: bool = False) -> Compact:
        """The gated output from x's open channels, computing only the filters open for some sample.
        ``plain``: every filter, no controller (the network without its gates). Called by :func:`run_skip`
        under ``DecoupledNet.forward_skip``'s no_grad (a decorator here would cost every layer its
        context switch)."""
        # The submodules from the dict, not as attributes: nn.Module's __getattr__ is the slow path of a failed
        # lookup, and between two convs every line here runs from cold caches (benchmarks/nnd_speed.py).
        modules = self._modules
        conv, act = modules["conv"], modules["act"]
        if x.channels != conv.in_channels:
            raise ValueError(f"GatedConv: layer_input has {x.channels} channels on dim 1, expected in_channels = "
                             f"{conv.in_channels}")
        recorder = self.recorder
        if plain:
            y, means = self._activate(self.folded(x, recorder=recorder), act)
            return Compact(y, None, conv.out_channels, None, means)
        controller = modules["controller"]
        weight1 = None
        if x.index is not None:  # fc1's columns of the open input channels, kept per input pattern
            weight1 = self._controller_columns.get((controller.fc1.weight,), x.key,
                                                   lambda: controller.fc1.weight.index_select(1, x.index))
        # The pooled input when the previous activation computed it, else the map itself.
        z, is_open, mixed = controller.gates_of_map(x.values if x.means is None else x.means, x.index,
                                                    weight1=weight1)
        # The one host read of the layer: the K-byte pattern of the filters some sample opens, counted by the
        # controller's own call (on the CPU a view; on a GPU the layer's one synchronisation). Its bytes are
        # the caches' key: a bytes comparison says "all open", not a numpy reduction, for between two convs
        # every call runs from cold caches.
        open_host = (is_open if is_open.device.type == "cpu" else is_open.cpu()).numpy()
        out_key = open_host.tobytes()
        if out_key == self._all_open_key:
            out_key = out_index = None
        else:
            # keyed by device too: after model.to(device) the kept index must be the new device's
            out_index = self._open_index.get((), (out_key, z.device),
                                             lambda: torch.from_numpy(np.flatnonzero(open_host)).to(z.device))
        y, means = self._activate(self.folded(x, out_key, out_index, recorder), act)
        gate = None
        if len(z) > 1 and bool(mixed):  # a sample closes a filter of the union
            gate = z > 0
            open_gate = (gate if out_index is None else gate.index_select(1, out_index)).to(y.dtype)
            y = y.mul_(open_gate[:, :, None, None])
            if means is not None:  # the gated map's means: the gate is constant over the positions
                means = means.mul_(open_gate)
        out = Compact(y, out_index, conv.out_channels, out_key, means)
        if recorder is not None and recorder.macs is not None:  # counting: the gates are returned
            recorder.record(z > 0 if gate is None else gate, None, y)  # bool; forward_skip converts them
        return out


class GatedResidualBlock(nn.Module):
    """A torchvision ResNet block with its inner convs gated: ``units`` (GatedConv, in order, each one's
    controller reading its input), then the last conv and batch norm ungated, the residual sum and the ReLU.
    :class:`GatedBasicBlock` and :class:`GatedBottleneck` differ only in how many units they have."""

    def units(self) -> List[GatedConv]:
        raise NotImplementedError

    def last(self) -> Tuple[nn.Conv2d, nn.Module]:
        raise NotImplementedError

    def _folded_parts(self) -> Tuple[FoldedConv, Optional[FoldedConv]]:
        """The last conv and the downsample (a 1x1 conv and its batch norm, as torchvision builds it) folded,
        made once."""
        if getattr(self, "_folded", None) is None:
            last = FoldedConv(*self.last())
            downsample = None
            parts = list(self.downsample) if isinstance(self.downsample, nn.Sequential) else []
            if (len(parts) in (1, 2) and isinstance(parts[0], nn.Conv2d)
                    and (len(parts) == 1 or isinstance(parts[1], nn.BatchNorm2d))):
                downsample = FoldedConv(*parts)
            self._folded = (last, downsample)
        return self._folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for unit in self.units():
            h = unit(h)
        conv, bn = self.last()
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(bn(conv(h)) + identity)

    def forward_skip(self, x: Compact, plain: bool = False) -> Compact:
        """The block from x's open channels: its units skip their closed filters, the last conv reads only
        the open channels of the last unit, the downsample only x's; the residual sum is dense, and its ReLU
        gives the next block's first controller its pooled input. Called as :meth:`GatedConv.forward_skip`."""
        recorder = self.units()[0].recorder
        h = x
        for unit in self.units():
            h = run_skip(unit, h, plain)
        last, downsample = self._folded_parts()
        out = last(h, recorder=recorder)
        if self.downsample is None:
            identity = x.dense()
        elif downsample is not None:
            identity = downsample(x, recorder=recorder)
        else:  # a downsample of another make: computed in full, on both paths
            identity = self.downsample(x.dense())
            if recorder is not None and recorder.macs is not None:
                for layer in self.downsample.modules():
                    if isinstance(layer, nn.Conv2d):
                        recorder.count(layer, layer.out_channels, layer.in_channels, identity)
        means = relu_mean_(out, identity)
        return Compact(out, None, out.shape[1], None, means)


class GatedBasicBlock(GatedResidualBlock):
    """torchvision's BasicBlock (conv1, bn1, relu, conv2, bn2, downsample) with conv1's output gated."""

    def __init__(self, block: nn.Module, *, reduction: int = 4):
        super().__init__()
        self.unit1 = GatedConv(block.conv1, block.bn1, nn.ReLU(inplace=True), reduction=reduction)
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.downsample = block.downsample
        self.relu = nn.ReLU(inplace=True)

    def units(self) -> List[GatedConv]:
        return [self.unit1]

    def last(self) -> Tuple[nn.Conv2d, nn.Module]:
        return self.conv2, self.bn2


class GatedBottleneck(GatedResidualBlock):
    """torchvision's Bottleneck (conv1..3, bn1..3, relu, downsample) with conv1's and conv2's outputs gated;
    conv2's controller reads conv1's gated output, its input."""

    def __init__(self, block: nn.Module, *, reduction: int = 4):
        super().__init__()
        self.unit1 = GatedConv(block.conv1, block.bn1, nn.ReLU(inplace=True), reduction=reduction)
        self.unit2 = GatedConv(block.conv2, block.bn2, nn.ReLU(inplace=True), reduction=reduction)
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.downsample = block.downsample
        self.relu = nn.ReLU(inplace=True)

    def units(self) -> List[GatedConv]:
        return [self.unit1, self.unit2]

    def last(self) -> Tuple[nn.Conv2d, nn.Module]:
        return self.conv3, self.bn3
