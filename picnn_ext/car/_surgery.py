"""Structural removal of filters: the conv (or Linear) loses output channels, the per-channel modules after
it (BatchNorm) lose theirs, and the conv or Linear that reads them loses the same input channels.

What is supported (anything else is refused with a ValueError that says why):
- the layer is a Conv1d/2d/3d (groups=1) or a Linear;
- it is followed, tensor to tensor, by per-channel modules only (BatchNorm, activations, pooling, dropout);
- the next conv (groups=1) or Linear reads exactly those K channels (a Linear after global pooling, not
  after a flatten of a spatial map);
- when that reader is inside ``model.head`` (the interpreted layer of a PICNN-style model), the head's own
  per-filter parameters (``theta`` and ``P`` of PICNN, ``G`` of CSG: any parameter or buffer of the head
  itself whose last dim is K) lose the same columns, and ``num_filters`` attributes follow.
After the surgery the smaller network is checked on example images against the original one with the
same filters zeroed: a network that is not such a chain (a residual connection, two readers) is refused
instead of being silently wrong.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ._layers import FILTER_LAYERS, ChannelGroup, model_logits, named_module

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _replace_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.clone())  # a registered buffer stays a buffer


def _check_groups(module: nn.Module, name: str, role: str) -> None:
    if getattr(module, "groups", 1) != 1:
        raise ValueError(f"layer: cannot prune through {role} {name!r}, a grouped conv (groups={module.groups})")


def _slice_outputs(module: nn.Module, keep: torch.Tensor) -> None:
    _replace_parameter(module, "weight", module.weight.detach().index_select(0, keep))
    if module.bias is not None:
        _replace_parameter(module, "bias", module.bias.detach().index_select(0, keep))
    if isinstance(module, nn.Linear):
        module.out_features = len(keep)
    else:
        module.out_channels = len(keep)


def _slice_batch_norm(module: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(module, name, None)
        if value is not None:
            _replace_parameter(module, name, value.detach().index_select(0, keep))
    module.num_features = len(keep)


def _slice_inputs(module: nn.Module, keep: torch.Tensor) -> None:
    _replace_parameter(module, "weight", module.weight.detach().index_select(1, keep))
    if isinstance(module, nn.Linear):
        module.in_features = len(keep)
    else:
        module.in_channels = len(keep)


def _slice_head(head: nn.Module, keep: torch.Tensor, num_filters: int) -> None:
    """The head's own per-filter tensors (theta, G, ...): those whose last dim is K."""
    for name, value in list(head.named_parameters(recurse=False)) + list(head.named_buffers(recurse=False)):
        if value.dim() >= 1 and value.shape[-1] == num_filters:
            _replace_parameter(head, name, value.detach().index_select(value.dim() - 1, keep))
    if getattr(head, "num_filters", None) == num_filters:
        head.num_filters = len(keep)


def check_filters(filters: Sequence[int], num_filters: int, name: str = "filters") -> List[int]:
    chosen = sorted({int(index) for index in filters})
    if any(index < 0 or index >= num_filters for index in chosen):
        raise ValueError(f"{name} must be filter indices in [0, {num_filters}), got {list(filters)}")
    if len(chosen) >= num_filters:
        raise ValueError(f"{name}: removing all {num_filters} filters would leave no layer; keep at least one")
    return chosen


def remove_in_place(model: nn.Module, group: ChannelGroup, filters: List[int]) -> None:
    """Remove ``filters`` (sorted, valid) of ``group`` from ``model`` itself."""
    name, num_filters = group.name, group.num_filters
    layer = group.module
    if not isinstance(layer, FILTER_LAYERS):
        raise ValueError(f"layer {name!r} is a {type(layer).__name__}: pruning removes the filters of a conv or "
                         f"Linear layer")
    _check_groups(layer, name, "the layer")
    if group.consumer is None:
        raise ValueError(f"layer {name!r}: no conv or Linear reads its output through per-channel modules only "
                         f"(BatchNorm, activation, pooling), so it cannot be pruned structurally")
    consumer = named_module(model, group.consumer)
    _check_groups(consumer, group.consumer, "the reading layer")
    reads = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
    if reads != num_filters:
        raise ValueError(f"layer {name!r} has {num_filters} filters but the next layer {group.consumer!r} reads "
                         f"{reads} input channels (a flattened map?); it cannot be pruned structurally")
    keep = torch.tensor([i for i in range(num_filters) if i not in set(filters)], device=layer.weight.device)
    _slice_outputs(layer, keep)
    for follower in group.followers:
        module = named_module(model, follower)
        if isinstance(module, _BATCH_NORMS):
            _slice_batch_norm(module, keep)
    _slice_inputs(consumer, keep)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and group.consumer.startswith("head."):
        _slice_head(head, keep, num_filters)
        if getattr(model, "num_filters", None) == num_filters:
            model.num_filters = len(keep)
    elif group.consumer.startswith("interpreted"):
        # The backbone's last conv: the widths that PICNN and its backbone record.
        if getattr(model, "in_channels", None) == num_filters:
            model.in_channels = len(keep)
        backbone = getattr(model, "backbone", None)
        if getattr(backbone, "out_channels", None) == num_filters:
            backbone.out_channels = len(keep)


def _masked_logits(model: nn.Module, group: ChannelGroup, filters: List[int], example: torch.Tensor):
    """The original model's logits with ``filters`` zeroed where their removal puts a zero."""
    def zero(module, inputs, output):
        mask = torch.ones(group.num_filters, dtype=output.dtype, device=output.device)
        mask[filters] = 0
        shape = [1] * output.dim()
        shape[group.channel_dim] = group.num_filters
        return output * mask.view(shape)

    handle = named_module(model, group.gate_name).register_forward_hook(zero)
    try:
        return model_logits(model(example))
    finally:
        handle.remove()


@torch.no_grad()
def check_removal(original: nn.Module, pruned: nn.Module, group: ChannelGroup, filters: List[int],
                  example: torch.Tensor) -> None:
    """The smaller network must compute what the original one computes with the filters zeroed."""
    modes = original.training, pruned.training
    original.eval()
    pruned.eval()
    try:
        expected = _masked_logits(original, group, filters, example)
        try:
            got = model_logits(pruned(example))
        except RuntimeError as error:
            raise ValueError(f"layer {group.name!r}: the network does not read this layer as a plain chain (a "
                             f"residual connection or a second reader?), so it cannot be pruned structurally: "
                             f"{error}") from error
    finally:
        original.train(modes[0])
        pruned.train(modes[1])
    tolerance = 1e3 * torch.finfo(expected.dtype).eps * max(1.0, float(expected.abs().max()) if expected.numel() else 1.0)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=0, atol=tolerance):
        raise ValueError(f"layer {group.name!r}: after removing filters the network no longer computes what it "
                         f"computes with them zeroed (its output is read elsewhere too, e.g. by a residual "
                         f"connection), so it cannot be pruned structurally")
