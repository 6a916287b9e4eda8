"""Pure-PyTorch versions of the ops: the fallback backend and the readable statement of what the
compiled kernels compute.

The random draws use the same counter-based Philox4x32-10 function as csrc/common/philox.h, keyed by the
element index, written with int64 tensor arithmetic; on the CPU the per-call seed comes from the same
aten::random_ call as in the C++ kernel, so this backend and the compiled CPU backend draw identical masks
after the same torch.manual_seed.
"""
from __future__ import annotations

import os

import torch

from ._checks import (check_controller_args, check_gate_args, check_grad_like, check_relu_mean_args,
                      check_sample_class_args, check_sample_class_backward_args, opmath_dtype, position_dims)

# Value checks (range of p, NaN logits) on the host, with a synchronisation on CUDA; else device-side there.
HOST_VALUE_CHECKS = os.environ.get("PICNN_EXT_CHECK_VALUES", "0").strip() not in ("", "0")

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mul_hi_lo(a: torch.Tensor, m: int):
    """(hi, lo) 32-bit words of a * m, for int64 `a` in [0, 2^32) and a 32-bit constant m.

    The 64-bit product does not fit int64, so m is split in 16-bit halves: a * m = t_hi * 2^16 + t_lo with
    both partial products below 2^48.
    """
    t_lo = a * (m & 0xFFFF)
    t_hi = a * (m >> 16)
    low_part = ((t_hi & 0xFFFF) << 16) + t_lo  # < 2^49
    return (t_hi >> 16) + (low_part >> 32), low_part & _MASK32


def philox4x32_10(counter, key):
    """Ten Philox4x32 rounds; counter: 4 int64 tensors (or ints), key: 2; each a 32-bit value."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(c0, _PHILOX_M0)
        hi1, lo1 = _mul_hi_lo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


_MASK62 = (1 << 62) - 1


def _as_int64(value):
    """A Python int in [0, 2^64) as the int64 with the same 64 bits (what the ops' int arguments carry)."""
    if isinstance(value, int) and value >= 1 << 63:
        return value - (1 << 64)
    return value


def philox_uniform(like: torch.Tensor, seed, offset) -> torch.Tensor:
    """float32 uniforms in [0, 1) shaped like `like`: element i is word i % 4 of the Philox block of counter
    (offset // 4, i // 4) under key `seed` (csrc/common/philox.h).

    `seed` and `offset` are ints or int64 tensors on like's device (a tensor seed keeps the draw free of
    host synchronisation).
    """
    n = like.numel()
    block = torch.arange((n + 3) // 4, dtype=torch.int64, device=like.device)
    seed = torch.as_tensor(_as_int64(seed), dtype=torch.int64, device=like.device)
    offset = torch.as_tensor(_as_int64(offset), dtype=torch.int64, device=like.device)
    # The kernels shift the offset as an unsigned 64-bit number; int64's >> copies the sign bit, so an offset
    # of 2^63 or more (a negative int64) needs its two top bits cleared to give the same counter.
    step = (offset >> 2) & _MASK62
    words = philox4x32_10((step & _MASK32, (step >> 32) & _MASK32, block & _MASK32, (block >> 32) & _MASK32),
                          (seed & _MASK32, (seed >> 32) & _MASK32))
    word = torch.stack(words, dim=1).flatten()[:n]
    return ((word >> 8).to(torch.float32) * (1.0 / 16777216.0)).reshape(like.shape)


def draw_seed(generator, device) -> torch.Tensor:
    """One Philox seed per call, as a 0-dim int64 tensor on `device` (no host synchronisation)."""
    return torch.empty((), dtype=torch.int64, device=device).random_(generator=generator)


def check_probabilities(p: torch.Tensor) -> None:
    """p must hold probabilities: NaN or a value outside [0, 1] would silently become a 0 mask."""
    bad = (p < 0) | (p > 1) | p.isnan()
    message = "bernoulli_gate: p must hold probabilities in [0, 1] (no NaN)"
    if p.device.type == "cpu" or HOST_VALUE_CHECKS:
        if bad.any():
            b, k = bad.nonzero()[0].tolist()
            raise ValueError(f"{message}; p[{b}, {k}] = {p[b, k].item()}")
    else:
        torch._assert_async(~bad.any(), message)  # device-side: no synchronisation


def _broadcast_over_positions(per_channel: torch.Tensor, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """(B, K) viewed so that it broadcasts against x with channels on `channel_dim` (1 or last)."""
    ones = [1] * (x.dim() - 2)
    if channel_dim == 1:
        return per_channel.view(per_channel.shape[0], per_channel.shape[1], *ones)
    return per_channel.view(per_channel.shape[0], *ones, per_channel.shape[1])


def gate_mask(p, hard, noise=None, generator=None):
    """mask[b, k] in p's dtype: 1 where u < p (hard) or p itself (soft)."""
    check_probabilities(p)
    if not hard:
        return p.clone(memory_format=torch.contiguous_format)
    acc = opmath_dtype(p.dtype)
    u = noise if noise is not None else philox_uniform(p, draw_seed(generator, p.device), 0)
    return (u.to(acc) < p.to(acc)).to(p.dtype).contiguous()


def bernoulli_gate(x, p, hard=True, noise=None, generator=None, channel_dim=1):
    """y = x * mask broadcast over positions; returns (y, mask)."""
    layout = check_gate_args(x, p, noise, channel_dim)
    mask = gate_mask(p, hard, noise, generator)
    acc = opmath_dtype(x.dtype)
    scale = _broadcast_over_positions(mask.to(acc), x, layout.channel_dim)
    y = (x.to(acc) * scale).to(x.dtype).contiguous(memory_format=layout.memory_format)
    return y, mask


def bernoulli_gate_backward(grad_y, x, mask, channel_dim):
    """Straight-through backward: (grad_x, grad_p) = (grad_y * mask, sum over positions of grad_y * x)."""
    layout = check_gate_args(x, mask, None, channel_dim, p_name="mask")
    check_grad_like(grad_y, x, "bernoulli_gate_backward", "grad_y", "x")
    acc = opmath_dtype(x.dtype)
    g = grad_y.to(acc)
    grad_x = (g * _broadcast_over_positions(mask.to(acc), x, layout.channel_dim)).to(x.dtype)
    grad_x = grad_x.contiguous(memory_format=layout.memory_format)
    positions = position_dims(x, layout.channel_dim)
    product = g * x.to(acc)
    grad_p = product.sum(positions) if positions else product
    return grad_x, grad_p.to(mask.dtype).reshape(layout.batch, layout.channels)


def _check_finite_rows(logits: torch.Tensor) -> None:
    message = "sample_class: logits must not be NaN and each row needs a finite maximum"
    bad = logits.isnan().any(-1) | ~logits.max(-1).values.isfinite() if logits.numel() else logits.new_zeros(0, dtype=torch.bool)
    if logits.device.type == "cpu" or HOST_VALUE_CHECKS:
        if bad.any():
            raise ValueError(f"{message}; row {bad.nonzero()[0].item()} is not")
    else:
        torch._assert_async(~bad.any(), message)


def sample_class(logits, noise=None, generator=None):
    """One categorical draw per row of softmax(logits): (exact one-hot in logits' dtype, int64 index)."""
    check_sample_class_args(logits, noise)
    _check_finite_rows(logits)
    batch, classes = logits.shape
    acc = opmath_dtype(logits.dtype)
    if noise is not None:
        u = noise.to(acc)
    else:
        u = philox_uniform(logits.new_empty(batch, 1), draw_seed(generator, logits.device), 0).view(batch).to(acc)
    # Inverse CDF on the unnormalised weights: the first class whose running sum exceeds u * total.
    weights = torch.exp(logits.to(acc) - logits.to(acc).max(-1, keepdim=True).values)
    running = weights.cumsum(-1)
    index = (running <= u[:, None] * running[:, -1:]).sum(-1)
    # Rounding can leave u * total at the total: take the last class of positive weight.
    last_positive = classes - 1 - (weights > 0).flip(-1).to(torch.int8).argmax(-1)
    index = torch.where(index >= classes, last_positive, index)
    onehot = torch.nn.functional.one_hot(index, classes).to(logits.dtype)
    return onehot, index


def sample_class_backward(grad_onehot, logits):
    """Softmax backward of the straight-through one-hot: pi * (g - sum(pi * g))."""
    check_sample_class_backward_args(grad_onehot, logits)
    acc = opmath_dtype(logits.dtype)
    pi = torch.softmax(logits.to(acc), dim=-1)
    g = grad_onehot.to(acc)
    return (pi * (g - (pi * g).sum(-1, keepdim=True))).to(logits.dtype)


def controller_logits(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor,
                      bias2: torch.Tensor) -> torch.Tensor:
    """NND's controller: W2 relu(W1 mean_positions(x) + b1) + b2, (B, K), x (B, C, *S) or (B, C) already
    pooled; differentiable."""
    check_controller_args(x, weight1, bias1, weight2, bias2)
    u = x if x.dim() == 2 else x.mean(dim=tuple(range(2, x.dim())))  # (a mean over dim=() would take all)
    return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(u, weight1, bias1)), weight2, bias2)


def controller_gates(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor,
                     bias2: torch.Tensor):
    """(z, open, mixed): z as controller_logits; open (K,) uint8, 1 where some sample has z > 0; mixed, a bool
    scalar: some sample closes a filter that another opens."""
    check_controller_args(x, weight1, bias1, weight2, bias2, op="controller_gates")
    z = controller_logits(x, weight1, bias1, weight2, bias2)
    gate = z.detach() > 0
    some, every = gate.any(dim=0), gate.all(dim=0)
    return z, some.to(torch.uint8), (some & ~every).any()


def relu_mean_(x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x <- relu(x + residual) in place; returns its mean over the positions, (B, C)."""
    check_relu_mean_args(x, residual)
    if residual is not None:
        x.add_(residual)
    x.relu_()
    return x.mean(dim=tuple(range(2, x.dim())))
