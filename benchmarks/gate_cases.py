"""The workloads of the gate benchmarks: the fused op against the pure-PyTorch composition it replaces, run
eagerly and through torch.compile (the two things a user without picnn_ext would reach for).

The composition (DESIGN.md section 2):
    y = x * (p + sg(bernoulli(p) - p))[..., None, None]

Implementations (`make_step`):
- `fused`: picnn_ext.ops.bernoulli_gate, autograd included.
- `eager`: the composition, op by op.
- `compile`: torch.compile(composition) with the default inductor backend; compilation happens in the
  warm-up call, timed apart (`compile_seconds`).
- `kernels` (forward+backward only): the fused forward and backward ops called directly, without autograd:
  the kernels' own time, so that `fused - kernels` is the per-call overhead of autograd and the wrapper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from picnn_ext import ops


@dataclass(frozen=True)
class GateCase:
    device: str
    dtype: torch.dtype
    shape: tuple  # (B, K, H, W), pooled (B, K) or tokens (B, N, K)
    layout: str  # "contiguous", "channels_last", "pooled" or "tokens"

    @property
    def channel_dim(self) -> int:
        return -1 if self.layout == "tokens" else 1

    @property
    def id(self) -> str:
        dims = "x".join(map(str, self.shape))
        return f"{self.device}-{str(self.dtype).replace('torch.', '')}-{self.layout}-{dims}"

    def tensors(self):
        """x, p and grad_y on the device, x in the case's memory layout."""
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.shape, generator=generator).to(device=self.device, dtype=self.dtype)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        B, K = self.shape[0], self.shape[self.channel_dim]
        p = torch.rand(B, K, generator=generator).to(self.device)
        grad_y = torch.randn_like(x)
        return x.requires_grad_(True), p.requires_grad_(True), grad_y

    def bytes_forward(self) -> int:
        """Bytes the forward must move: read x, write y (the (B, K) mask is negligible)."""
        return 2 * self.numel * self.element_size

    def bytes_forward_backward(self) -> int:
        """Forward (read x, write y) plus backward (read grad_y and x, write grad_x)."""
        return 5 * self.numel * self.element_size

    @property
    def compiled_competitor(self) -> bool:
        """Whether torch.compile of the composition is timed for this case: every CPU case; on a GPU (tens of
        seconds of compilation each, in a lease of minutes) the float32 (2048, 7x7) maps in both layouts and the
        float32 tokens."""
        if self.device == "cpu":
            return True
        return self.dtype == torch.float32 and (self.shape == (256, 2048, 7, 7) or self.layout == "tokens")

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


def composition_forward(x, p, channel_dim):
    mask = torch.bernoulli(p.detach())
    straight_through = p + (mask - p).detach()
    if channel_dim == 1:
        return x * straight_through.view(*straight_through.shape, *([1] * (x.dim() - 2))).to(x.dtype)
    return x * straight_through[:, None, :].to(x.dtype)


def fused_forward(x, p, channel_dim):
    return ops.bernoulli_gate(x, p, channel_dim=channel_dim)[0]


IMPLEMENTATIONS = ("fused", "eager", "compile")


def _forward(impl: str):
    if impl == "fused":
        return fused_forward
    if impl == "eager":
        return composition_forward
    if impl == "compile":
        torch._dynamo.reset()  # every case compiles afresh: its compile time is its own
        return torch.compile(composition_forward, fullgraph=True)
    raise ValueError(f"unknown implementation {impl!r}")


def _synchronizer(case: GateCase, synchronize: bool):
    """torch.cuda.synchronize for a CUDA case timed by a host clock (so wall time is device time); nothing for
    the CPU, or for CUDA timed by events around many calls (benchmarks/interleaved.py --device cuda)."""
    return torch.cuda.synchronize if (synchronize and case.device == "cuda") else (lambda: None)


def make_kernels_step(case: GateCase, synchronize: bool = True):
    """The fused forward and backward kernels alone: no autograd node, no Python wrapper."""
    x, p, grad_y = case.tensors()
    x, p = x.detach(), p.detach()
    forward, backward = torch.ops.picnn.bernoulli_gate.default, torch.ops.picnn.bernoulli_gate_backward.default
    sync = _synchronizer(case, synchronize)

    def step():
        _, mask = forward(x, p, True, None, None, case.channel_dim)
        backward(grad_y, x, mask, case.channel_dim)
        sync()
    return step


def make_step(case: GateCase, impl: str, backward: bool, synchronize: bool = True):
    """A function running one forward (and backward) of `impl` (synchronised on CUDA unless told not to)."""
    if impl == "kernels":
        return make_kernels_step(case, synchronize)
    x, p, grad_y = case.tensors()
    forward = _forward(impl)
    sync = _synchronizer(case, synchronize)

    if backward:
        def step():
            y = forward(x, p, case.channel_dim)
            torch.autograd.grad(y, (x, p), grad_y)
            sync()
    else:
        def step():
            with torch.no_grad():
                forward(x, p, case.channel_dim)
            sync()
    return step


def make_copy(case: GateCase, synchronize: bool = True):
    """One copy of x into a preallocated tensor: the device's attainable bandwidth for this size."""
    x, _, _ = case.tensors()
    out = torch.empty_like(x)
    sync = _synchronizer(case, synchronize)

    def step():
        out.copy_(x)
        sync()
    return step


def default_cases() -> list[GateCase]:
    """The CPU cases (maps of the core issue in both layouts, the pooled features PICNN's default head gates on
    every step, ViT tokens), and the GPU cases where a GPU is present."""
    cases = [GateCase("cpu", torch.float32, (64, 512, 14, 14), layout) for layout in ("contiguous", "channels_last")]
    cases.append(GateCase("cpu", torch.float32, (128, 64), "pooled"))
    cases.append(GateCase("cpu", torch.float32, (32, 197, 768), "tokens"))
    return cases + (cuda_cases() if torch.cuda.is_available() else [])


def cuda_cases() -> list[GateCase]:
    """Issue 7's GPU cases: B=256, (K, HxW) of (512, 14x14), (2048, 7x7) and (64, 56x56) in both layouts, and
    ViT-B tokens (197, 768), each in float32, bfloat16 and float16."""
    cases = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in ((256, 512, 14, 14), (256, 2048, 7, 7), (256, 64, 56, 56)):
            for layout in ("contiguous", "channels_last"):
                cases.append(GateCase("cuda", dtype, shape, layout))
        cases.append(GateCase("cuda", dtype, (256, 197, 768), "tokens"))
    return cases
