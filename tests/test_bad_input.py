"""Bad input raises a clear error naming the argument, on every backend, before anything is written.

On CUDA the value checks (range and NaN of p, NaN logits) are device-side assertions by default, which lose the
CUDA context: those cases run in subprocesses, with PICNN_EXT_CHECK_VALUES=1 (a ValueError from the host
check) and without it (a device-side failure).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Cases checked on tensor values rather than metadata.
VALUE_CASES = {"p above 1", "p below 0", "p NaN", "p NaN soft", "logits NaN", "logits all -inf"}


def gate_args(device, **override):
    args = dict(x=torch.randn(2, 3, 4, 4, device=device), p=torch.rand(2, 3, device=device), hard=True, noise=None,
                generator=None, channel_dim=1)
    args.update(override)
    return args


GATE_CASES = [
    ("p above 1", dict(p=lambda d: torch.full((2, 3), 1.5, device=d)), ValueError, r"p must hold probabilities"),
    ("p below 0", dict(p=lambda d: torch.full((2, 3), -0.1, device=d)), ValueError, r"p must hold probabilities"),
    ("p NaN", dict(p=lambda d: torch.tensor([[0.5, float("nan"), 0.5]] * 2, device=d)), ValueError,
     r"p must hold probabilities"),
    ("p NaN soft", dict(p=lambda d: torch.tensor([[0.5, float("nan"), 0.5]] * 2, device=d), hard=lambda d: False), ValueError,
     r"p must hold probabilities"),
    ("p shape", dict(p=lambda d: torch.rand(2, 4, device=d)), ValueError, r"p must have shape \(B, K\) = \(2, 3\)"),
    ("p 1-D", dict(p=lambda d: torch.rand(6, device=d)), ValueError, r"p must have shape"),
    ("integer x", dict(x=lambda d: torch.ones(2, 3, 4, 4, dtype=torch.int64, device=d)), TypeError,
     r"x must be a floating-point tensor"),
    ("integer p", dict(p=lambda d: torch.ones(2, 3, dtype=torch.int64, device=d)), TypeError,
     r"p must be a floating-point tensor"),
    ("p on another device", dict(p=lambda d: torch.rand(2, 3, device="meta")), ValueError, r"same device"),
    ("noise shape", dict(noise=lambda d: torch.rand(3, 2, device=d)), ValueError, r"noise must have the shape of p"),
    ("noise integer", dict(noise=lambda d: torch.ones(2, 3, dtype=torch.int32, device=d)), TypeError, r"noise must be"),
    ("channel_dim 2", dict(channel_dim=lambda d: 2), ValueError, r"channel_dim must be 1 or -1"),
    ("channel_dim out of range", dict(channel_dim=lambda d: 7), ValueError, r"channel_dim must be 1 or -1"),
    ("x 1-D", dict(x=lambda d: torch.randn(6, device=d)), ValueError, r"x must have at least 2 dims"),
]


def call_case(backend, case):
    """Build the arguments of a named case and call the op (also run in subprocesses for CUDA)."""
    for name, override, _error, _message in GATE_CASES:
        if name == case:
            return backend.gate(**gate_args(backend.device, **{k: v(backend.device) for k, v in override.items()}))
    for name, override, _error, _message in SAMPLE_CASES:
        if name == case:
            return backend.sample(**sample_args(backend.device, override))
    raise KeyError(case)


def check_value_case_on_cuda(backend, case, message):
    """A value check on CUDA, in fresh processes: a ValueError with the host check switched on, else a
    device-side failure (the CUDA context of that process is lost) whose assertion message, printed by the
    device, names the argument."""
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from conftest import Backend; from test_bad_input import call_case\n"
            f"backend = Backend({backend.namespace!r}, 'cuda')\n"
            "try:\n"
            f"    call_case(backend, {case!r}); torch.cuda.synchronize()\n"
            "except ValueError as error: print('ValueError:', error)\n"
            "except RuntimeError as error: print('RuntimeError:', error)\n")
    for check_values in ("1", "0"):
        env = {**os.environ, "PICNN_EXT_CHECK_VALUES": check_values}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        output = result.stdout + result.stderr
        if check_values == "1":
            assert result.returncode == 0 and "ValueError:" in output, output
            assert any(word in output for word in message.split("|")), output
        else:
            assert result.returncode != 0 or "RuntimeError:" in output, output
            if backend.namespace == "picnn":  # the kernel's device-side assertion names the argument
                assert "device-side assert" in output, output
                assert any(word in output for word in message.split("|")), output


@pytest.mark.parametrize("case,override,error,message", GATE_CASES, ids=[c[0] for c in GATE_CASES])
def test_bernoulli_gate_rejects(backend, case, override, error, message):
    if backend.device.type == "cuda" and case in VALUE_CASES:
        return check_value_case_on_cuda(backend, case, "p must hold probabilities")
    args = gate_args(backend.device, **{k: v(backend.device) for k, v in override.items()})
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    with pytest.raises(error, match=message):
        backend.gate(**args)
    for name, value in before.items():  # nothing written into the inputs
        torch.testing.assert_close(args[name], value, rtol=0, atol=0, equal_nan=True)


def test_bernoulli_gate_backward_rejects_mismatched_grad(backend):
    x, mask = torch.randn(2, 3, 4, device=backend.device), torch.ones(2, 3, device=backend.device)
    with pytest.raises(ValueError, match="grad_y must have the shape of x"):
        backend.ops.bernoulli_gate_backward(torch.randn(2, 3, 5, device=backend.device), x, mask, 1)
    with pytest.raises(TypeError, match="grad_y must have the dtype of x"):
        backend.ops.bernoulli_gate_backward(torch.randn(2, 3, 4, device=backend.device).double(), x, mask, 1)


SAMPLE_CASES = [
    ("logits 1-D", dict(logits=lambda d: torch.randn(5, device=d)), ValueError, r"logits must have shape \(B, C\)"),
    ("logits no classes", dict(logits=lambda d: torch.randn(5, 0, device=d)), ValueError, r"logits must have shape"),
    ("logits integer", dict(logits=lambda d: torch.ones(2, 3, dtype=torch.int64, device=d)), TypeError,
     r"logits must be a floating-point tensor"),
    ("logits NaN", dict(logits=lambda d: torch.tensor([[0.0, float("nan")]], device=d)), ValueError, r"NaN"),
    ("logits all -inf", dict(logits=lambda d: torch.full((1, 3), -float("inf"), device=d)), ValueError, r"finite"),
    ("noise shape", dict(noise=lambda d: torch.rand(2, 3, device=d)), ValueError, r"noise must have shape \(B,\)"),
    ("noise device", dict(noise=lambda d: torch.rand(2, device="meta")), ValueError, r"same device"),
]


def sample_args(device, override):
    args = dict(logits=torch.randn(2, 3, device=device), noise=None, generator=None)
    args.update({k: v(device) for k, v in override.items()})
    return args


@pytest.mark.parametrize("case,override,error,message", SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_sample_class_rejects(backend, case, override, error, message):
    if backend.device.type == "cuda" and case in VALUE_CASES:
        return check_value_case_on_cuda(backend, case, "NaN|finite")
    with pytest.raises(error, match=message):
        backend.sample(**sample_args(backend.device, override))


def test_sample_class_backward_rejects_bad_logits(backend):
    with pytest.raises(ValueError, match=r"logits must have shape \(B, C\)"):
        backend.ops.sample_class_backward(torch.randn(6, device=backend.device), torch.randn(6, device=backend.device))


def test_public_functions_reject_non_tensors():
    from picnn_ext import ops
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.bernoulli_gate([[1.0]], torch.rand(1, 1))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        ops.sample_class("logits")
