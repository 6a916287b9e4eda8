"""The pieces of NND's skipping inference path (DESIGN.md section 5): a map that holds only its open
channels, convs with their batch norm folded in, and the compacted weights of each gate pattern, kept.

Why they are what they are (ResNet-18/50 at 224 px on the CPU, ``benchmarks/nnd_speed.py``):
- every conv runs with its eval-mode batch norm folded into its weight and bias (:class:`FoldedConv`), on the
  skipping path and on the plain network it is measured against alike, so that the two differ only in what
  gating adds and removes;
- a gated layer's open filters depend on the input, but a network uses few distinct patterns (and one, when
  its gates are set by hand): the compacted weight of a pattern (the open filters' rows of the folded
  weight, the open input channels' columns) is gathered once and kept (:class:`PatternCache`), so that a
  layer pays a dict lookup instead of two gathers of its weight per call;
- a pattern is read to the host once per layer, as a K-byte copy: it is the cache's key, and the compact
  conv's shape depends on it, so this is the one host synchronisation a layer needs on a GPU.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Compact", "FoldedConv", "PatternCache", "run_skip"]


@dataclass(slots=True)  # slots: made once per layer on the hot path, where a dict costs
class Compact:
    """A (B, channels, H, W) map of which only the channels ``index`` (None: all) may be non-zero;
    ``values`` holds those channels, in the order of ``index``; ``key`` is the open pattern as bytes (one
    per channel, on the host), the cache key of the weights that read this map; ``means`` (B, n), when the
    activation that wrote ``values`` computed them (``picnn_ext.ops.relu_mean_``), their means over the
    positions: the next controller's pooled input, so that it need not read the map again."""

    values: torch.Tensor
    index: Optional[torch.Tensor]
    channels: int
    key: Optional[bytes] = None
    means: Optional[torch.Tensor] = None

    def dense(self) -> torch.Tensor:
        if self.index is None:
            return self.values
        shape = (self.values.shape[0], self.channels, *self.values.shape[2:])
        # The dense map keeps the values' memory format (channels_last stays channels_last).
        out = self.values.new_zeros(shape)
        if self.values.dim() == 4 and self.values.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out.index_copy_(1, self.index, self.values)

    @staticmethod
    def of(x: torch.Tensor) -> "Compact":
        return Compact(x, None, x.shape[1])


def _versions(tensors: Sequence[Optional[torch.Tensor]]) -> Tuple:
    # A list comprehension, not a generator: every layer pays this on every call.
    return tuple([(t.data_ptr(), t._version) for t in tensors if t is not None])


def _nbytes(entry) -> int:
    if isinstance(entry, torch.Tensor):
        return entry.numel() * entry.element_size()
    if isinstance(entry, (tuple, list)):
        return sum(_nbytes(item) for item in entry)
    return 0


class PatternCache:
    """Tensors derived from some parameters, one entry per key (a gate pattern): all are dropped when one
    of the parameters changes (their version counters say when), and at most ``size`` keys and
    ``max_bytes`` (16 MiB) of tensors are kept, the least recently used dropped first (the newest always
    stays), so that a network whose inputs take many paths holds bounded memory: a ResNet-50 layer4 conv's
    compacted weights are up to 9 MB a pattern."""

    def __init__(self, size: int = 64, max_bytes: int = 16 << 20):
        self.size = size
        self.max_bytes = max_bytes
        self._bytes = 0
        self._sources: Tuple = ()
        self._entries: "OrderedDict[Hashable, object]" = OrderedDict()

    def get(self, sources: Sequence[Optional[torch.Tensor]], key: Hashable, build: Callable[[], object]):
        versions = _versions(sources)
        if versions != self._sources:
            self._entries.clear()
            self._bytes = 0
            self._sources = versions
        entry = self._entries.get(key)
        if entry is None:
            entry = build()
            self._entries[key] = entry
            self._bytes += _nbytes(entry)
            while len(self._entries) > 1 and (len(self._entries) > self.size or self._bytes > self.max_bytes):
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= _nbytes(dropped)
        else:
            self._entries.move_to_end(key)
        return entry

    def __len__(self) -> int:
        return len(self._entries)


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


class FoldedConv:
    """``bn(conv(x))`` of an eval-mode conv and batch norm as one conv with a bias, computed for a subset of
    its filters and of its input channels: :meth:`__call__` takes a :class:`Compact` input and the
    pattern of the filters wanted. The folded weight and each pattern's compacted one are kept in a
    :class:`PatternCache` and rebuilt when a parameter or running statistic changes. Not a module: it
    holds no state of its own that a checkpoint should see."""

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.Module] = None, *, size: int = 64):
        self.conv = conv
        self.bn = bn if bn is not None else nn.Identity()
        self.cache = PatternCache(size)

    @property
    def plain(self) -> bool:
        """Whether the conv can be computed from a subset of channels (groups of 1, zero padding)."""
        return self.conv.groups == 1 and self.conv.padding_mode == "zeros"

    def _sources(self):
        # The modules' own dicts, not parameters()/buffers(): those generators cost ~20 us per call, paid
        # by every layer on every call; a buffer replaced by .to() is a new tensor here, so it is seen.
        return (*self.conv._parameters.values(), *self.bn._parameters.values(), *self.bn._buffers.values())

    def _fold(self):
        weight, bias = self.conv.weight, self.conv.bias
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        affine = _bn_affine(self.bn)
        if affine is not None:
            scale, shift = affine
            weight, bias = weight * scale[:, None, None, None], bias * scale + shift
        return weight.detach(), bias.detach()

    def weights(self, out_key: Optional[bytes], out_index: Optional[torch.Tensor], x: Compact):
        """(weight, bias) of the filters ``out_index`` (None: all) reading x's open channels."""
        def build():
            weight, bias = self._fold_cached()
            if out_index is not None:
                weight, bias = weight.index_select(0, out_index), bias.index_select(0, out_index)
            if x.index is not None:
                weight = weight.index_select(1, x.index)
            # oneDNN reads a contiguous weight fastest; index_select already gives one.
            return weight.contiguous(), bias.contiguous()

        if out_index is None and x.index is None:
            return self._fold_cached()
        return self.cache.get(self._sources(), (out_key, x.key), build)

    def _fold_cached(self):
        return self.cache.get(self._sources(), (None, None), self._fold)

    def _output_size(self, x: torch.Tensor) -> Tuple[int, int]:
        conv = self.conv
        return tuple((size + 2 * pad - dil * (k - 1) - 1) // stride + 1 for size, pad, dil, k, stride in
                     zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride))

    def __call__(self, x: Compact, out_key: Optional[bytes] = None, out_index: Optional[torch.Tensor] = None,
                 recorder=None) -> torch.Tensor:
        """bn(conv(x.dense()))[:, out_index], from x's open channels and the filters out_index alone."""
        conv = self.conv
        if not self.plain:
            y = self.bn(conv(x.dense()))
            return y if out_index is None else y.index_select(1, out_index)
        if x.index is not None and x.index.numel() == 0:  # every input channel closed: the map is zero
            x = Compact.of(x.dense())
        if out_index is not None and out_index.numel() == 0:  # every filter closed: no conv to run
            return x.values.new_zeros(x.values.shape[0], 0, *self._output_size(x.values))
        weight, bias = self.weights(out_key, out_index, x)
        y = F.conv2d(x.values, weight, bias, conv.stride, conv.padding, conv.dilation)
        if recorder is not None and recorder.macs is not None:
            recorder.count(conv, weight.shape[0], weight.shape[1], y)
        return y


def run_skip(module: nn.Module, x: Compact, plain: bool = False) -> Compact:
    """The skipping path through any module of a decoupled body: gated layers and blocks skip, channelwise
    layers work on the open channels, anything else gets the dense map. ``plain``: every gate open and no
    controller run, the network without its gates (the reference of the skipping path's speed)."""
    if x.index is not None and x.index.numel() == 0:
        x = Compact.of(x.dense())
    if hasattr(module, "forward_skip"):
        return module.forward_skip(x, plain=plain)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = run_skip(child, x, plain)
        return x
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ReLU,
                           nn.Identity, nn.Dropout)):
        return Compact(module(x.values), x.index, x.channels, x.key)
    return Compact.of(module(x.dense()))
