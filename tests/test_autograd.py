"""Autograd of the ops: the C++ autograd (csrc/autograd/) where the library is built, the Python one on the
pure-PyTorch namespaces; gradients, double backward, and which one a call goes through."""
import sys

import pytest
import torch

from picnn_ext import _ext, ops
from test_registration import run_python

needs_native_cpu = pytest.mark.skipif(not _ext.native_available("cpu"), reason=_ext.missing_reason("cpu"))


def python_calls_during(fn):
    """The Python functions called while fn() runs (sys.setprofile sees every Python frame), less the
    standard library's abc caches, which fill on first use."""
    called = []

    def profile(frame, event, _arg):
        if event == "call" and not frame.f_code.co_filename.startswith("<frozen"):
            called.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return called


def autograd_kernel_of(op: str) -> str:
    """The dispatcher's line for the op's Autograd kernel: where it was registered."""
    lines = [line for line in torch._C._dispatch_dump(op).splitlines() if line.startswith("Autograd")]
    assert len(lines) == 1, lines
    return lines[0]


@needs_native_cpu
def test_compiled_ops_record_the_cpp_autograd_nodes():
    x = torch.randn(3, 4, 5, requires_grad=True)
    y, mask = ops.bernoulli_gate(x, torch.rand(3, 4, requires_grad=True))
    onehot, index = ops.sample_class(torch.randn(3, 6, requires_grad=True))
    assert type(y.grad_fn).__name__ == "CppFunction"
    assert y.grad_fn.name() == "torch::autograd::CppNode<picnn::(anonymous namespace)::BernoulliGateFunction>"
    assert onehot.grad_fn.name() == "torch::autograd::CppNode<picnn::(anonymous namespace)::SampleClassFunction>"
    assert mask.grad_fn is None and not mask.requires_grad
    assert index.grad_fn is None and not index.requires_grad
    assert "csrc/autograd/bernoulli_gate_autograd.cpp" in autograd_kernel_of("picnn::bernoulli_gate")
    assert "csrc/autograd/sample_class_autograd.cpp" in autograd_kernel_of("picnn::sample_class")


@needs_native_cpu
def test_the_compiled_backward_runs_no_python():
    x = torch.randn(4, 8, 3, 3, requires_grad=True)
    p = torch.rand(4, 8, requires_grad=True)
    logits = torch.randn(4, 5, requires_grad=True)
    y, _ = ops.bernoulli_gate(x, p)
    onehot, _ = ops.sample_class(logits)
    loss = y.sum() + (onehot * torch.arange(5.0)).sum()
    called = set(python_calls_during(lambda: torch.autograd.grad(loss, (x, p, logits))))
    # torch.autograd.grad itself runs some Python; a graph of built-in ATen ops shows which.
    plain = ((x * p[:, :, None, None]).sum() + torch.softmax(logits, -1).sum())
    baseline = set(python_calls_during(lambda: torch.autograd.grad(plain, (x, p, logits))))
    assert called and called <= baseline, called - baseline

    # The pure-PyTorch namespace goes through Python autograd, as the same probe shows.
    y_py, _ = torch.ops.picnn_py.bernoulli_gate(x, p, True, None, None, 1)
    called = python_calls_during(lambda: torch.autograd.grad(y_py.sum(), (x, p)))
    assert any("_registration.py:gate_backward" in name for name in called)


def test_the_python_backend_setting_keeps_python_autograd():
    code = ("import torch\nfrom picnn_ext import ops, _registration\n"
            "x = torch.randn(2, 3, 4, requires_grad=True); p = torch.rand(2, 3, requires_grad=True)\n"
            "y, _ = ops.bernoulli_gate(x, p)\n"
            "print(ops.backend_for('cpu'), type(y.grad_fn).__name__)\n"
            "print([l for l in torch._C._dispatch_dump('picnn::bernoulli_gate').splitlines() if 'Autograd' in l])\n"
            "g = torch.randn_like(y); gx, gp = torch.autograd.grad(y, (x, p), g)\n"
            "assert torch.equal(gp, (g * x).sum(-1))\n")
    result = run_python(code, PICNN_EXT_BACKEND="python")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().split("\n")
    assert first.split() == ["python", "GeneratedBackwardFor_picnn_py_bernoulli_gate_defaultBackward"]
    assert "torch/library.py" in second and "csrc/autograd" not in second


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "inputs_without_grad"])
def test_calls_that_record_nothing_give_the_same_values_and_no_graph(backend, context):
    # The compiled autograd kernels skip the node when nothing is recorded: same outputs, none requiring grad.
    x = torch.randn(3, 4, 5, device=backend.device, requires_grad=context != "inputs_without_grad")
    p = torch.rand(3, 4, device=backend.device, requires_grad=context != "inputs_without_grad")
    noise, logits = torch.rand(3, 4, device=backend.device), x.detach()[:, :, 0].clone().requires_grad_(x.requires_grad)
    u = torch.rand(3, device=backend.device)
    # the reference: the same calls recorded by autograd (the node path)
    recorded_y, recorded_mask = backend.gate(x.detach().requires_grad_(), p.detach().requires_grad_(), True, noise,
                                             None, 1)
    recorded_onehot, recorded_index = backend.sample(logits.detach().requires_grad_(), u)
    assert recorded_y.grad_fn is not None and recorded_onehot.grad_fn is not None
    guard = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(context)
    with guard() if guard else torch.enable_grad():
        y, mask = backend.gate(x, p, True, noise, None, 1)
        onehot, index = backend.sample(logits, u)
    assert not (y.requires_grad or mask.requires_grad or onehot.requires_grad)
    assert y.grad_fn is None and onehot.grad_fn is None
    assert torch.equal(y, recorded_y.detach()) and torch.equal(mask, recorded_mask)
    assert torch.equal(onehot, recorded_onehot.detach()) and torch.equal(index, recorded_index)


@pytest.mark.parametrize("needs", ["x", "p", "both"])
def test_only_the_gradients_asked_for(backend, needs):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=backend.device, requires_grad=needs != "p")
    p = torch.rand(3, 4, dtype=torch.float64, device=backend.device, requires_grad=needs != "x")
    noise = torch.rand(3, 4, dtype=torch.float64, device=backend.device)
    y, mask = backend.gate(x, p, True, noise, None, 1)
    grad_y = torch.randn_like(y)
    wanted = [t for t in (x, p) if t.requires_grad]
    grads = torch.autograd.grad(y, wanted, grad_y)
    expected = {id(x): grad_y * mask[:, :, None], id(p): (grad_y * x).sum(-1)}
    for tensor, grad in zip(wanted, grads):
        torch.testing.assert_close(grad, expected[id(tensor)].detach(), rtol=1e-12, atol=1e-12)


def test_gradcheck_through_the_public_ops():
    torch.manual_seed(4)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    p = (0.1 + 0.8 * torch.rand(3, 4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.bernoulli_gate(a, b, hard=False)[0], (x, p))
    assert torch.autograd.gradgradcheck(lambda a, b: ops.bernoulli_gate(a, b, hard=False)[0], (x, p))


def composition_gate(x, p, noise, hard):
    """x * (p + sg(m - p)): the gate's value and straight-through gradient in plain autograd."""
    mask = (noise < p).to(p.dtype) if hard else p
    return x * (p + (mask - p).detach())[:, :, None, None]


@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
def test_double_backward_of_the_gate_is_that_of_the_straight_through_composition(backend, hard):
    torch.manual_seed(5)
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64, device=backend.device, requires_grad=True)
    p = torch.rand(3, 4, dtype=torch.float64, device=backend.device, requires_grad=True)
    noise = torch.rand(3, 4, dtype=torch.float64, device=backend.device)
    weight, a, b = torch.randn_like(x), torch.randn_like(x), torch.randn_like(p)

    def second_order(gate):
        grad_x, grad_p = torch.autograd.grad((weight * gate(x, p)).sum(), (x, p), create_graph=True)
        inner = (a * grad_x).sum() + (b * grad_p).sum() + (grad_p ** 2).sum()
        return torch.autograd.grad(inner, (x, p), allow_unused=True, materialize_grads=True)

    ours = second_order(lambda x, p: backend.gate(x, p, hard, noise, None, 1)[0])
    expected = second_order(lambda x, p: composition_gate(x, p, noise, hard))
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_double_backward_of_sample_class_is_that_of_softmax(backend):
    torch.manual_seed(6)
    logits = torch.randn(5, 7, dtype=torch.float64, device=backend.device, requires_grad=True)
    noise = torch.rand(5, dtype=torch.float64, device=backend.device)
    weight, a = torch.randn(5, 7, dtype=torch.float64, device=backend.device), torch.randn_like(logits)

    def second_order(probabilities):
        (grad,) = torch.autograd.grad((weight * probabilities(logits)).sum(), logits, create_graph=True)
        return torch.autograd.grad((a * grad).sum() + (grad ** 2).sum(), logits)[0]

    ours = second_order(lambda t: backend.sample(t, noise.float())[0])
    torch.testing.assert_close(ours, second_order(lambda t: torch.softmax(t, -1)), rtol=1e-12, atol=1e-12)
