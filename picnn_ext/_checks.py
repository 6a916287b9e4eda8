"""Argument checks of the ops, in Python: used by the fake (meta) kernels and the pure-PyTorch backend.

They mirror csrc/common/checks.h so that every backend rejects the same input with the same message,
naming the argument and what was expected. Metadata only: nothing here reads tensor values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(value, op: str, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def check_float_tensor(t: torch.Tensor, op: str, name: str) -> None:
    check_tensor(t, op, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                        f"got {t.dtype}")


def check_same_device(t: torch.Tensor, ref: torch.Tensor, op: str, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                         f"both must be on the same device")


@dataclass(frozen=True)
class GateLayout:
    """B samples, K channels, S positions each, and the memory order the kernels walk."""
    batch: int
    channels: int
    positions: int
    channel_dim: int  # normalised: 1 or x.dim() - 1
    channels_innermost: bool  # memory is (B, S, K) rather than (B, K, S)
    memory_format: torch.memory_format


def normalize_channel_dim(x: torch.Tensor, channel_dim: int) -> int:
    if x.dim() < 2:
        raise ValueError(f"bernoulli_gate: x must have at least 2 dims, (B, K, ...) or (B, ..., K); "
                         f"got shape {list(x.shape)}")
    dim = channel_dim + x.dim() if channel_dim < 0 else channel_dim
    if dim not in (1, x.dim() - 1):
        raise ValueError(f"bernoulli_gate: channel_dim must be 1 or -1 (the last of x's {x.dim()} dims), "
                         f"got {channel_dim}")
    return dim


def gate_layout(x: torch.Tensor, channel_dim: int) -> GateLayout:
    dim = normalize_channel_dim(x, channel_dim)
    batch, channels = x.shape[0], x.shape[dim]
    positions = 1
    for d in range(1, x.dim()):
        if d != dim:
            positions *= x.shape[d]
    innermost, fmt = False, torch.contiguous_format
    if dim == x.dim() - 1 and x.dim() > 2:
        innermost = True
    elif positions == 1:
        innermost = True  # (B, K) or 1x1 maps: one row of K per sample beats K rows of one
    elif not x.is_contiguous() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        innermost, fmt = True, torch.channels_last
    elif not x.is_contiguous() and x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        innermost, fmt = True, torch.channels_last_3d
    return GateLayout(batch, channels, positions, dim, innermost, fmt)


def position_dims(x: torch.Tensor, channel_dim: int) -> list[int]:
    """The dims of x other than the batch (0) and the channels (`channel_dim`): the positions to sum over."""
    dim = channel_dim % x.dim()
    return [d for d in range(1, x.dim()) if d != dim]


def check_gate_args(x, p, noise, channel_dim, p_name: str = "p") -> GateLayout:
    op = "bernoulli_gate"
    check_float_tensor(x, op, "x")
    check_float_tensor(p, op, p_name)
    check_same_device(p, x, op, p_name, "x")
    layout = gate_layout(x, channel_dim)
    expected = (layout.batch, layout.channels)
    if tuple(p.shape) != expected:
        raise ValueError(f"{op}: {p_name} must have shape (B, K) = {expected} for x of shape {list(x.shape)} "
                         f"with channel_dim={channel_dim}, got {list(p.shape)}")
    if noise is not None:
        check_float_tensor(noise, op, "noise")
        check_same_device(noise, x, op, "noise", "x")
        if tuple(noise.shape) != expected:
            raise ValueError(f"{op}: noise must have the shape of p, (B, K) = {expected}, got {list(noise.shape)}")
    return layout


def check_grad_like(grad, ref, op: str, name: str, ref_name: str) -> None:
    check_tensor(grad, op, name)
    if grad.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have the shape of {ref_name}, {list(ref.shape)}, got {list(grad.shape)}")
    if grad.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} must have the dtype of {ref_name}, {ref.dtype}, got {grad.dtype}")
    check_same_device(grad, ref, op, name, ref_name)


def check_sample_class_args(logits, noise) -> None:
    op = "sample_class"
    check_float_tensor(logits, op, "logits")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"{op}: logits must have shape (B, C) with C >= 1, got {list(logits.shape)}")
    if noise is not None:
        check_float_tensor(noise, op, "noise")
        check_same_device(noise, logits, op, "noise", "logits")
        if noise.dim() != 1 or noise.shape[0] != logits.shape[0]:
            raise ValueError(f"{op}: noise must have shape (B,) = ({logits.shape[0]},), got {list(noise.shape)}")


def check_sample_class_backward_args(grad_onehot, logits) -> None:
    op = "sample_class_backward"
    check_float_tensor(logits, op, "logits")
    if logits.dim() != 2:
        raise ValueError(f"{op}: logits must have shape (B, C), got {list(logits.shape)}")
    check_grad_like(grad_onehot, logits, op, "grad_onehot", "logits")


def check_controller_args(x, weight1, bias1, weight2, bias2, op: str = "controller_logits") -> None:
    """As csrc/cpu/controller_cpu.cpp, except that every float dtype is taken (the compiled kernels take
    float32 and float64; picnn_ext.ops.controller_logits and controller_gates send the others here)."""
    check_float_tensor(x, op, "x")
    if x.dim() < 2:
        raise ValueError(f"{op}: x must be (B, C, *spatial), or (B, C) already pooled, got shape {list(x.shape)}")
    for name, t in (("weight1", weight1), ("bias1", bias1), ("weight2", weight2), ("bias2", bias2)):
        check_tensor(t, op, name)
        check_same_device(t, x, op, name, "x")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype ({x.dtype}), got {t.dtype}")
    channels = x.shape[1]
    if weight1.dim() != 2 or weight1.shape[1] != channels:
        raise ValueError(f"{op}: weight1 must be (hidden, C) with C = x.size(1) = {channels}, got shape "
                         f"{list(weight1.shape)}")
    hidden = weight1.shape[0]
    if bias1.dim() != 1 or bias1.shape[0] != hidden:
        raise ValueError(f"{op}: bias1 must be (hidden,) = ({hidden},), got shape {list(bias1.shape)}")
    if weight2.dim() != 2 or weight2.shape[1] != hidden:
        raise ValueError(f"{op}: weight2 must be (K, hidden) with hidden = weight1.size(0) = {hidden}, got shape "
                         f"{list(weight2.shape)}")
    if bias2.dim() != 1 or bias2.shape[0] != weight2.shape[0]:
        raise ValueError(f"{op}: bias2 must be (K,) = ({weight2.shape[0]},), got shape {list(bias2.shape)}")


def check_relu_mean_args(x, residual) -> None:
    """As csrc/cpu/relu_mean_cpu.cpp, except that every float dtype is taken (the compiled kernel takes
    float32 and float64; picnn_ext.ops.relu_mean_ sends the others here)."""
    op = "relu_mean_"
    check_float_tensor(x, op, "x")
    if x.dim() < 3:
        raise ValueError(f"{op}: x must be (B, C, *spatial) with at least one spatial dim, got shape {list(x.shape)}")
    if residual is not None:
        check_tensor(residual, op, "residual")
        check_same_device(residual, x, op, "residual", "x")
        if residual.dtype != x.dtype:
            raise TypeError(f"{op}: residual must have x's dtype ({x.dtype}), got {residual.dtype}")
        if residual.shape != x.shape:
            raise ValueError(f"{op}: residual must have x's shape {list(x.shape)}, got {list(residual.shape)}")


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_features(features: torch.Tensor, num_filters: int, channel_dim: int, op: str) -> None:
    """A head's input: a float tensor with K = num_filters filters on channel_dim."""
    check_float_tensor(features, op, "features")
    if features.dim() < 2 or features.shape[channel_dim] != num_filters:
        raise ValueError(f"{op}: features must have the head's {num_filters} filters on dim {channel_dim}, "
                         f"got shape {list(features.shape)}")


def check_labels(targets: torch.Tensor, batch: int, num_classes: int, op: str, name: str = "targets") -> None:
    """(B,) integer class labels in [0, num_classes). The values are read on the CPU only, where a read costs
    no synchronisation; on a GPU an out-of-range label ends in the indexing kernel's device assertion."""
    check_tensor(targets, op, name)
    if targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(f"{op}: {name} must have shape (B,) = ({batch},), got {list(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must be integer class labels, got {targets.dtype}")
    # Under torch.compile the read would break the graph; the compiled indexing still refuses bad labels.
    if targets.device.type == "cpu" and targets.numel() and not torch.compiler.is_compiling():
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{op}: {name} must be class labels in [0, {num_classes}), got values in [{low}, {high}]")
