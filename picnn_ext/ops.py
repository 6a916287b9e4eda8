"""The public ops of picnn_ext and the choice of backend.

    y, mask = bernoulli_gate(x, p, hard=True, noise=None, generator=None, channel_dim=1)
    onehot_st, index = sample_class(logits, noise=None, generator=None)

Each call goes to the compiled kernels for the tensor's device (`torch.ops.picnn`) where they were built
and load, else to the pure-PyTorch backend (`torch.ops.picnn_py`) with one warning that says why.
PICNN_EXT_BACKEND=python forces the pure-PyTorch backend, =native forces the compiled one (an error where
it is missing). See DESIGN.md section 2 for the math.
"""
from __future__ import annotations

import warnings

import torch

from . import _ext, _registration, reference
from ._checks import check_tensor

__all__ = ["bernoulli_gate", "sample_class", "philox_uniform", "controller_logits", "controller_gates", "relu_mean_",
           "backend_for"]

_registration.define_python_namespace("picnn_py")
if _ext.CPU_LIBRARY.loaded:
    _registration.register_fakes("picnn")
    if not _registration.has_autograd_kernels("picnn"):  # a library built before csrc/autograd/ existed
        _registration.register_python_autograd("picnn")
    if not _ext.CUDA_LIBRARY.loaded:
        _registration.fill_in_python_kernels("picnn", "CUDA")
    else:
        _registration.fill_in_python_kernels("picnn", "CUDA", _registration.CPU_ONLY_OPS)
else:
    _registration.define_python_namespace("picnn")

_warned_devices: set[str] = set()


def backend_for(device: torch.device | str, *, warn: bool = True) -> str:
    """'native' or 'python': the backend that serves tensors on `device` under the current settings.

    With warn=True (the ops' own calls), the first fallback on a device type warns once with the reason.
    """
    device_type = torch.device(device).type
    if _ext.BACKEND not in _ext.BACKEND_CHOICES:
        raise ValueError(f"PICNN_EXT_BACKEND must be one of {', '.join(_ext.BACKEND_CHOICES)}, got {_ext.BACKEND!r}")
    if _ext.BACKEND == "python" or device_type == "meta":
        return "python"
    if _ext.native_available(device_type):
        return "native"
    if _ext.BACKEND == "native":
        raise RuntimeError(f"PICNN_EXT_BACKEND=native, but there are no compiled kernels for {device_type} tensors: "
                           f"{_ext.missing_reason(device_type)}")
    if warn and device_type not in _warned_devices and not torch.compiler.is_compiling():
        _warned_devices.add(device_type)
        warnings.warn(f"picnn_ext: using the pure-PyTorch fallback for {device_type} tensors because the compiled "
                      f"kernels are missing: {_ext.missing_reason(device_type)}", RuntimeWarning, stacklevel=3)
    return "python"


_NATIVE_OPS, _PYTHON_OPS = torch.ops.picnn, torch.ops.picnn_py
# The dtypes of the compiled kernels of NND's inference ops (the others take the composition).
_COMPILED_CONTROLLER_DTYPES = (torch.float32, torch.float64)
_NATIVE_SETTINGS = ("auto", "native")


def _ops(tensor, op: str, name: str):
    """The namespace serving `tensor`. A gate on a (B, K) tensor takes a few microseconds, so the common case
    (compiled CPU kernels, setting auto or native) is answered first, from the same state backend_for reads."""
    if not isinstance(tensor, torch.Tensor):
        check_tensor(tensor, op, name)
    device_type = tensor.device.type
    if device_type == "cpu" and _ext.CPU_LIBRARY.loaded and _ext.BACKEND in _NATIVE_SETTINGS:
        return _NATIVE_OPS
    return _NATIVE_OPS if backend_for(device_type) == "native" else _PYTHON_OPS


def bernoulli_gate(x: torch.Tensor, p: torch.Tensor, *, hard: bool = True, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, channel_dim: int = 1):
    """Gate each (sample, channel) of `x` by a mask drawn from `p`; returns `(y, mask)`.

    x: (B, K, *S) with channel_dim=1, or (B, *S, K) with channel_dim=-1; float32/64, float16, bfloat16.
    p: (B, K) probabilities in [0, 1].
    hard=True: mask = 1 where u < p, u uniform in [0, 1) (`noise` when given, else drawn from `generator`);
    hard=False: mask = p (a soft gate).
    y = x * mask. Backward (straight-through): grad_x = grad_y * mask, grad_p = sum over positions of
    grad_y * x. `mask` carries no gradient.
    """
    return _ops(x, "bernoulli_gate", "x").bernoulli_gate(x, p, bool(hard), noise, generator, int(channel_dim))


def sample_class(logits: torch.Tensor, *, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
    """One class per row drawn from softmax(logits); returns `(onehot_st, index)`.

    The forward value of `onehot_st` is the exact one-hot of `index`; its gradient is that of softmax(logits)
    (straight-through). `noise`: (B,) uniforms in [0, 1) to make the draw explicit.
    """
    return _ops(logits, "sample_class", "logits").sample_class(logits, noise, generator)


def philox_uniform(like: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """The float32 uniforms a gate draws for key (seed, offset), shaped like the (B, K) tensor `like`."""
    return _ops(like, "philox_uniform", "like").philox_uniform(like, int(seed), int(offset))


def controller_logits(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor,
                      bias2: torch.Tensor) -> torch.Tensor:
    """NND's controller, ``W2 relu(W1 mean_positions(x) + b1) + b2``: (B, K) from x (B, C, *spatial), or from
    x (B, C) already pooled (the means that :func:`relu_mean_` returns).

    The compiled CPU kernel (float32, float64) computes it in one call, for inference: it has no gradient,
    so where one is wanted (grad mode on and an input that requires it) the differentiable composition of
    torch ops runs instead, as it does for other dtypes and devices.
    """
    return _inference_op("controller_logits", x, weight1, bias1, weight2, bias2)


def controller_gates(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor,
                     bias2: torch.Tensor):
    """``(z, open, mixed)``: z as :func:`controller_logits`, and what NND's skipping path reads of it on the
    host, counted in the same call: ``open`` (K,) uint8, 1 where some sample's gate is open (z > 0), the
    filters to compute; ``mixed``, a bool scalar tensor: some sample closes a filter that another opens.
    Inference only (z carries no gradient from the compiled kernel; the composition runs where one is wanted).
    """
    return _inference_op("controller_gates", x, weight1, bias1, weight2, bias2)


def relu_mean_(x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``x <- relu(x + residual)`` in place (``residual`` optional, x's shape), and the mean of the result over
    the positions, (B, C) from x (B, C, *spatial): an activation that also gives the next NND controller its
    pooled input in the same pass over the map (the skipping path's ReLU).

    The compiled CPU kernel (float32, float64) has no gradient, so where one is wanted the composition of
    torch ops runs instead, as it does for other dtypes and devices.
    """
    return _inference_op("relu_mean_", x, residual)


def _inference_op(name: str, x: torch.Tensor, *args):
    """NND's inference ops: the compiled kernel, which has no gradient, where it serves (float32 or float64,
    no gradient wanted), else the differentiable composition of torch ops (picnn_ext.reference)."""
    check_tensor(x, name, "x")
    # Grad mode is off on the skipping path, where these run once per layer: that answer comes first.
    wants_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in (x, *args))
    if wants_grad or x.dtype not in _COMPILED_CONTROLLER_DTYPES:
        return getattr(reference, name)(x, *args)
    return getattr(_ops(x, name, "x"), name)(x, *args)
