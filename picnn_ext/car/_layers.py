"""Which modules a filter of a named layer lives in, found by tracing one forward pass.

Removing filter i of a conv means the layers that read it no longer see channel i. The module named by
``layer`` is often followed by per-channel modules (BatchNorm, activation, pooling, dropout): removing the
filter removes its channel from them too, so the equivalent of removal is a zero at the *end* of that run
of per-channel modules, at the input of the next conv or Linear (the "consumer"), not at the conv's own
output (BatchNorm would turn a zero into its shift). :func:`trace_group` finds that run by the call order
of the leaf modules and by following the tensor itself from one module to the next, so a module of
another branch that happens to run next is not taken for a follower.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

# Modules that act on each channel alone: removing a filter removes its channel from them (BatchNorm's
# parameters) or changes nothing in them (the others).
CHANNELWISE = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
# Layers whose weight has the output filters on dim 0 and the input channels on dim 1.
FILTER_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def declared_channels(module: nn.Module) -> Optional[int]:
    """The output channels a module declares, if any."""
    for attribute in ("out_channels", "out_features", "num_features"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    return None


def named_module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or layer not in modules or layer == "":
        candidates = [name for name, module in model.named_modules() if isinstance(module, FILTER_LAYERS)]
        shown = ", ".join(candidates[:12]) + (", ..." if len(candidates) > 12 else "")
        raise ValueError(f"layer must be the name of a module of the model (as model.named_modules() gives it), "
                         f"got {layer!r}; its conv and Linear layers are: {shown or 'none'}")
    return modules[layer]


@dataclass
class ChannelGroup:
    """A named layer, the per-channel modules that follow it, and the layer that reads them."""

    name: str
    module: nn.Module
    channel_dim: int                 # 1 for (B, K, ...) maps, -1 for a Linear's (..., K)
    num_filters: int                 # K
    followers: List[str] = field(default_factory=list)   # per-channel modules after it, in order
    gate_name: str = ""              # the module at whose output a removed filter is zero
    consumer: Optional[str] = None   # the next conv or Linear in call order, if there is one


class _Trace:
    """Forward hooks on every leaf module: call order, call counts, and the input and output tensors."""

    def __init__(self, model: nn.Module):
        self.calls: List[tuple] = []  # (name, input tensor or None, output)
        self.counts: dict = {}
        self.handles = []
        for name, module in model.named_modules():
            if next(module.children(), None) is None:
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def record(module, inputs, output):
            self.counts[name] = self.counts.get(name, 0) + 1
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            self.calls.append((name, first, output))
        return record

    def remove(self):
        for handle in self.handles:
            handle.remove()


def model_logits(output) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or its ``logits`` field (PICNNOutput and kin)."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise TypeError(f"the model must return logits (B, C), or an object with a `logits` field; "
                        f"got {type(output).__name__}")
    return logits


@torch.no_grad()
def trace_group(model: nn.Module, layer: str, example: torch.Tensor) -> ChannelGroup:
    """Resolve ``layer`` on one forward pass of ``example`` (a few images)."""
    module = named_module(model, layer)
    trace = _Trace(model)
    if next(module.children(), None) is not None:  # a container: watch its own output as well
        trace.handles.append(module.register_forward_hook(trace._hook(layer)))
    was_training = model.training
    model.eval()  # no batch statistics updated, no random pathway drawn
    try:
        model(example)
    finally:
        trace.remove()
        model.train(was_training)
    calls = trace.calls
    positions = [index for index, call in enumerate(calls) if call[0] == layer]
    if not positions:
        raise ValueError(f"layer {layer!r} did not run in a forward pass of the model")
    if len(positions) > 1:
        raise ValueError(f"layer {layer!r} runs {len(positions)} times in one forward pass; name a module "
                         f"that runs once")
    position = positions[0]
    output = calls[position][2]
    channel_dim = -1 if isinstance(module, nn.Linear) else 1
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        raise ValueError(f"layer {layer!r} must output a tensor of filters (B, K, ...) or (..., K); got "
                         f"{type(output).__name__}{'' if not isinstance(output, torch.Tensor) else list(output.shape)}")
    num_filters = output.shape[channel_dim]
    declared = declared_channels(module)
    if declared is not None and declared != num_filters:
        raise ValueError(f"layer {layer!r} declares {declared} channels but outputs {num_filters} on dim "
                         f"{channel_dim} (shape {list(output.shape)})")
    group = ChannelGroup(layer, module, channel_dim, num_filters, gate_name=layer)
    if not isinstance(module, FILTER_LAYERS):
        return group  # any other module: its own output channels are the filters
    # Follow the tensor through the per-channel modules that run next, each reading the previous output.
    modules = dict(model.named_modules())
    previous = output
    for name, first_input, later_output in calls[position + 1:]:
        later = modules[name]
        if isinstance(later, CHANNELWISE) and first_input is previous and trace.counts.get(name, 0) == 1:
            if isinstance(later, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and later.num_features != num_filters:
                raise ValueError(f"layer {layer!r} has {num_filters} filters but the BatchNorm {name!r} after it "
                                 f"has {later.num_features} channels")
            group.followers.append(name)
            group.gate_name = name
            previous = later_output
            continue
        if isinstance(later, nn.Flatten) and first_input is previous:
            # On the way to the reader, but no gate after it: it mixes the positions into the channels.
            previous = later_output
            continue
        if isinstance(later, FILTER_LAYERS):
            group.consumer = name
        break
    return group
