"""Shared fixtures: every op test runs on each backend the machine has (compiled and pure-PyTorch, on the
CPU and, where a GPU is present, on CUDA). A backend that is not present here is skipped with the reason."""
import pytest
import torch

from picnn_ext import _ext

BACKENDS = [
    pytest.param(("picnn", "cpu"), id="native-cpu"),
    pytest.param(("picnn_py", "cpu"), id="python-cpu"),
    pytest.param(("picnn", "cuda"), id="native-cuda"),
    pytest.param(("picnn_py", "cuda"), id="python-cuda"),
]


class Backend:
    """One namespace of ops on one device."""

    def __init__(self, namespace: str, device: str):
        self.namespace, self.device = namespace, torch.device(device)
        self.ops = getattr(torch.ops, namespace)

    def gate(self, x, p, hard=True, noise=None, generator=None, channel_dim=1):
        return self.ops.bernoulli_gate(x, p, hard, noise, generator, channel_dim)

    def sample(self, logits, noise=None, generator=None):
        return self.ops.sample_class(logits, noise, generator)

    def __repr__(self):
        return f"{self.namespace}@{self.device}"


@pytest.fixture(params=BACKENDS)
def backend(request):
    namespace, device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    if namespace == "picnn" and not _ext.native_available(device):
        pytest.skip(f"compiled {device} kernels missing: {_ext.missing_reason(device)}")
    return Backend(namespace, device)
