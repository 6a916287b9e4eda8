"""Registration of the ops with the PyTorch dispatcher: the pure-PyTorch backend, fake (meta) kernels and
Python autograd, for a namespace.

Two namespaces exist:
- `picnn`: the compiled ops (schemas in csrc/picnn.cpp, autograd in C++ in csrc/autograd/; the fakes come
  from here). Where a compiled part is missing, the pure-PyTorch kernels fill in for it, so
  `torch.ops.picnn.*` always works.
- `picnn_py`: the pure-PyTorch backend alone, always registered, so that it can be forced
  (PICNN_EXT_BACKEND=python) and compared with the compiled one in the same process.
"""
from __future__ import annotations

import torch

from . import reference
from ._checks import (check_controller_args, check_gate_args, check_grad_like, check_relu_mean_args,
                      check_sample_class_args, check_sample_class_backward_args, check_tensor)

# Must equal the schemas in csrc/picnn.cpp (tests/test_registration.py checks it).
SCHEMAS = {
    "bernoulli_gate": "bernoulli_gate(Tensor x, Tensor p, bool hard, Tensor? noise, Generator? generator, "
                      "int channel_dim) -> (Tensor, Tensor)",
    "bernoulli_gate_backward": "bernoulli_gate_backward(Tensor grad_y, Tensor x, Tensor mask, int channel_dim) "
                               "-> (Tensor, Tensor)",
    "sample_class": "sample_class(Tensor logits, Tensor? noise, Generator? generator) -> (Tensor, Tensor)",
    "sample_class_backward": "sample_class_backward(Tensor grad_onehot, Tensor logits) -> Tensor",
    "philox_uniform": "philox_uniform(Tensor like, int seed, int offset) -> Tensor",
    "controller_logits": "controller_logits(Tensor x, Tensor weight1, Tensor bias1, Tensor weight2, Tensor bias2) "
                         "-> Tensor",
    "controller_gates": "controller_gates(Tensor x, Tensor weight1, Tensor bias1, Tensor weight2, Tensor bias2) "
                        "-> (Tensor, Tensor, Tensor)",
    "relu_mean_": "relu_mean_(Tensor(a!) x, Tensor? residual) -> Tensor",
}

# Ops whose compiled kernel exists for the CPU only: the pure-PyTorch kernel serves their other devices.
CPU_ONLY_OPS = ("controller_logits", "controller_gates", "relu_mean_")

PYTHON_KERNELS = {
    "bernoulli_gate": reference.bernoulli_gate,
    "bernoulli_gate_backward": reference.bernoulli_gate_backward,
    "sample_class": reference.sample_class,
    "sample_class_backward": reference.sample_class_backward,
    "philox_uniform": reference.philox_uniform,
    "controller_logits": reference.controller_logits,
    "controller_gates": reference.controller_gates,
    "relu_mean_": reference.relu_mean_,
}

# The ops with a gradient; their backward ops are not differentiable themselves (double backward goes through
# the reference formulas instead, see register_python_autograd and csrc/autograd/).
DIFFERENTIABLE_OPS = ("bernoulli_gate", "sample_class")

# torch.library.Library objects unregister their ops when collected: keep them for the process's life.
_LIBRARIES: list = []


# ---- fake kernels: output metadata only, the same as the real kernels' ----

def _fake_bernoulli_gate(x, p, hard, noise, generator, channel_dim):
    layout = check_gate_args(x, p, noise, channel_dim)
    return torch.empty_like(x, memory_format=layout.memory_format), p.new_empty(p.shape)


def _fake_bernoulli_gate_backward(grad_y, x, mask, channel_dim):
    layout = check_gate_args(x, mask, None, channel_dim, p_name="mask")
    check_grad_like(grad_y, x, "bernoulli_gate_backward", "grad_y", "x")
    return torch.empty_like(x, memory_format=layout.memory_format), mask.new_empty(mask.shape)


def _fake_sample_class(logits, noise, generator):
    check_sample_class_args(logits, noise)
    return (torch.empty_like(logits, memory_format=torch.contiguous_format),
            logits.new_empty(logits.shape[0], dtype=torch.int64))


def _fake_sample_class_backward(grad_onehot, logits):
    check_sample_class_backward_args(grad_onehot, logits)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _fake_philox_uniform(like, seed, offset):
    check_tensor(like, "philox_uniform", "like")
    return like.new_empty(like.shape, dtype=torch.float32)


def _fake_controller_logits(x, weight1, bias1, weight2, bias2):
    check_controller_args(x, weight1, bias1, weight2, bias2)
    return x.new_empty((x.shape[0], weight2.shape[0]))


def _fake_controller_gates(x, weight1, bias1, weight2, bias2):
    check_controller_args(x, weight1, bias1, weight2, bias2, op="controller_gates")
    return (x.new_empty((x.shape[0], weight2.shape[0])), x.new_empty((weight2.shape[0],), dtype=torch.uint8),
            x.new_empty((), dtype=torch.bool))


def _fake_relu_mean_(x, residual):
    check_relu_mean_args(x, residual)
    return x.new_empty((x.shape[0], x.shape[1]))


FAKE_KERNELS = {
    "bernoulli_gate": _fake_bernoulli_gate,
    "bernoulli_gate_backward": _fake_bernoulli_gate_backward,
    "sample_class": _fake_sample_class,
    "sample_class_backward": _fake_sample_class_backward,
    "philox_uniform": _fake_philox_uniform,
    "controller_logits": _fake_controller_logits,
    "controller_gates": _fake_controller_gates,
    "relu_mean_": _fake_relu_mean_,
}


# ---- autograd in Python: the straight-through backward of each op, through the same namespace's backward op ----
# The compiled library registers its own autograd in C++ (csrc/autograd/); this one serves the pure-PyTorch
# namespaces. When the backward is itself recorded (create_graph=True, grad mode on inside the backward), it
# is computed by the differentiable reference formulas, the gate's with the straight-through mask
# p + sg(mask - p), so higher derivatives are those of the composition x * (p + sg(mask - p)) on every backend.

def register_python_autograd(namespace: str) -> None:
    ops = getattr(torch.ops, namespace)

    def gate_setup_context(ctx, inputs, output):
        x, p, _hard, _noise, _generator, channel_dim = inputs
        _y, mask = output
        ctx.save_for_backward(x, p, mask)
        ctx.channel_dim = channel_dim
        ctx.mark_non_differentiable(mask)
        ctx.set_materialize_grads(False)

    def gate_backward(ctx, grad_y, _grad_mask):
        x, p, mask = ctx.saved_tensors
        if grad_y is None:
            return None, None, None, None, None, None
        if torch.is_grad_enabled():
            straight_through = p + (mask - p).detach()
            grad_x, grad_p = reference.bernoulli_gate_backward(grad_y, x, straight_through, ctx.channel_dim)
        else:
            grad_x, grad_p = ops.bernoulli_gate_backward(grad_y, x, mask, ctx.channel_dim)
        return grad_x, grad_p, None, None, None, None

    def sample_setup_context(ctx, inputs, output):
        logits, _noise, _generator = inputs
        ctx.save_for_backward(logits)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def sample_backward(ctx, grad_onehot, _grad_index):
        (logits,) = ctx.saved_tensors
        if grad_onehot is None:
            return None, None, None
        backward = reference.sample_class_backward if torch.is_grad_enabled() else ops.sample_class_backward
        return backward(grad_onehot, logits), None, None

    torch.library.register_autograd(f"{namespace}::bernoulli_gate", gate_backward, setup_context=gate_setup_context)
    torch.library.register_autograd(f"{namespace}::sample_class", sample_backward, setup_context=sample_setup_context)


def has_autograd_kernels(namespace: str) -> bool:
    """Whether every differentiable op of `namespace` has an autograd kernel (for the compiled namespace,
    before any is registered from here: the C++ one of csrc/autograd/, which a library built before it
    existed lacks)."""
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{name}", "Autograd")
               for name in DIFFERENTIABLE_OPS)


def define_python_namespace(namespace: str) -> None:
    """Define every op in `namespace` with the pure-PyTorch kernels for all devices, plus fakes and autograd."""
    library = torch.library.Library(namespace, "DEF")
    _LIBRARIES.append(library)
    for name, schema in SCHEMAS.items():
        library.define(schema)
        library.impl(name, PYTHON_KERNELS[name], "CompositeExplicitAutograd")
    register_fakes(namespace)
    register_python_autograd(namespace)


def fill_in_python_kernels(namespace: str, dispatch_key: str, names=None) -> None:
    """Serve one device type of a compiled namespace with the pure-PyTorch kernels (of every op, or of
    ``names``)."""
    library = torch.library.Library(namespace, "IMPL")
    _LIBRARIES.append(library)
    for name in SCHEMAS if names is None else names:
        library.impl(name, PYTHON_KERNELS[name], dispatch_key)


def register_fakes(namespace: str) -> None:
    for name, fake in FAKE_KERNELS.items():
        torch.library.register_fake(f"{namespace}::{name}", fake)
