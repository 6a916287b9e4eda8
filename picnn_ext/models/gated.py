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

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.controller import ArchitectureController

__all__ = ["Compact", "GatedBasicBlock", "GatedBottleneck", "GatedConv", "GatedResidualBlock", "PathRecorder", "run_skip"]


@dataclass
class Compact:
    """A (B, channels, H, W) map of which only the channels ``index`` (None: all) may be non-zero;
    ``values`` holds those channels, in the order of ``index``."""

    values: torch.Tensor
    index: Optional[torch.Tensor]
    channels: int

    def dense(self) -> torch.Tensor:
        if self.index is None:
            return self.values
        shape = (self.values.shape[0], self.channels, *self.values.shape[2:])
        return self.values.new_zeros(shape).index_copy_(1, self.index, self.values)

    @staticmethod
    def of(x: torch.Tensor) -> "Compact":
        return Compact(x, None, x.shape[1])


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


def _bn_affine(bn: nn.Module):
    """(scale, shift) of an eval-mode batch norm, or None for no normalisation."""
    if isinstance(bn, nn.Identity):
        return None
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
        raise NotImplementedError(f"the skipping path needs BatchNorm2d with running statistics, got {bn}")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def conv_compact(conv: nn.Conv2d, x: Compact, out_index: Optional[torch.Tensor], recorder=None) -> torch.Tensor:
    """conv(x.dense())[:, out_index], computed from x's open channels and the filters out_index alone."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        y = conv(x.dense())
        return y if out_index is None else y.index_select(1, out_index)
    weight = conv.weight if out_index is None else conv.weight.index_select(0, out_index)
    if x.index is not None:
        weight = weight.index_select(1, x.index)
    bias = None if conv.bias is None or out_index is None else conv.bias.index_select(0, out_index)
    y = F.conv2d(x.values, weight, conv.bias if out_index is None else bias, conv.stride, conv.padding,
                 conv.dilation)
    if recorder is not None:
        recorder.count(conv, weight.shape[0], weight.shape[1], y)
    return y


def _affine(y: torch.Tensor, affine, index: Optional[torch.Tensor]) -> torch.Tensor:
    if affine is None:
        return y
    scale, shift = affine
    if index is not None:
        scale, shift = scale.index_select(0, index), shift.index_select(0, index)
    return torch.addcmul(shift[:, None, None], y, scale[:, None, None])


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

    def _folded(self):
        """The conv with its eval-mode batch norm folded in, (weight, bias); kept until a parameter or a
        running statistic changes (their version counters say when)."""
        tensors = [t for t in (self.conv.weight, self.conv.bias, *self.bn.parameters(), *self.bn.buffers())
                   if t is not None]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if getattr(self, "_folded_key", None) != key:
            weight, bias = self.conv.weight, self.conv.bias
            if bias is None:
                bias = weight.new_zeros(weight.shape[0])
            affine = _bn_affine(self.bn)
            if affine is not None:
                scale, shift = affine
                weight, bias = weight * scale[:, None, None, None], bias * scale + shift
            self._folded_cache = (weight.detach(), bias.detach())
            self._folded_key = key
        return self._folded_cache

    @torch.no_grad()
    def forward_skip(self, x: Compact) -> Compact:
        """The gated output from x's open channels, computing only the filters open for some sample."""
        if x.channels != self.conv.in_channels:
            raise ValueError(f"GatedConv: layer_input has {x.channels} channels on dim 1, expected in_channels = "
                             f"{self.conv.in_channels}")
        z = self.controller.logits_from_pooled(x.values.mean(dim=(2, 3)), x.index)
        gate = (z > 0).to(x.values.dtype)
        open_index = gate.amax(dim=0).nonzero().flatten()
        recorder = self.recorder
        weight, bias = self._folded()
        weight = weight.index_select(0, open_index)
        if x.index is not None:
            weight = weight.index_select(1, x.index)
        conv = self.conv
        if conv.groups != 1 or conv.padding_mode != "zeros":
            y = self.act(self.bn(conv(x.dense()))).index_select(1, open_index)
        else:
            y = self.act(F.conv2d(x.values, weight, bias.index_select(0, open_index), conv.stride, conv.padding,
                                  conv.dilation))
            if recorder is not None:
                recorder.count(conv, weight.shape[0], weight.shape[1], y)
        if y.shape[0] > 1:  # samples for which an open filter of the union is closed
            y = y * gate.index_select(1, open_index)[:, :, None, None]
        out = Compact(y, open_index, self.out_channels)
        if recorder is not None:
            recorder.record(gate, None, y)
        return out


def run_skip(module: nn.Module, x: Compact) -> Compact:
    """The skipping path through any module of a decoupled body: gated layers and blocks skip, channelwise
    layers work on the open channels, anything else gets the dense map."""
    if x.index is not None and x.index.numel() == 0:
        x = Compact.of(x.dense())
    if hasattr(module, "forward_skip"):
        return module.forward_skip(x)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = run_skip(child, x)
        return x
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ReLU,
                           nn.Identity, nn.Dropout)):
        return Compact(module(x.values), x.index, x.channels)
    return Compact.of(module(x.dense()))


class GatedResidualBlock(nn.Module):
    """A torchvision ResNet block with its inner convs gated: ``units`` (GatedConv, in order, each one's
    controller reading its input), then the last conv and batch norm ungated, the residual sum and the ReLU.
    :class:`GatedBasicBlock` and :class:`GatedBottleneck` differ only in how many units they have."""

    def units(self) -> List[GatedConv]:
        raise NotImplementedError

    def last(self) -> Tuple[nn.Conv2d, nn.Module]:
        raise NotImplementedError

    def _finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The residual sum and ReLU that end the block."""
        identity = x
        if self.downsample is not None:
            identity = self.downsample(x)
            recorder = self.units()[0].recorder
            if recorder is not None and recorder.macs is not None:
                for layer in self.downsample.modules():  # a 1x1 conv, computed in full on both paths
                    if isinstance(layer, nn.Conv2d):
                        recorder.count(layer, layer.out_channels, layer.in_channels, identity)
        return self.relu(out + identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for unit in self.units():
            h = unit(h)
        conv, bn = self.last()
        return self._finish(bn(conv(h)), x)

    @torch.no_grad()
    def forward_skip(self, x: Compact) -> Compact:
        dense = x.dense()
        h = Compact.of(dense)
        for unit in self.units():
            h = run_skip(unit, h)
        conv, bn = self.last()
        out = _affine(conv_compact(conv, h, None, self.units()[0].recorder), _bn_affine(bn), None)
        return Compact.of(self._finish(out, dense))


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
