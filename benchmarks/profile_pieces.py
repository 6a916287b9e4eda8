"""The single pieces that BENCHMARKS.md quotes for the small gate and the PICNN head step, each timed alone.

    python benchmarks/profile_pieces.py [--threads 1]

Wall clock (timeit, best of 9 repeats): these are microsecond pieces on an idle machine, compared with each
other in one run. State the allocator regime when quoting (MALLOC_* variables, printed first).
- the draw: a hard (128, 64) forward kernel against a soft one (no draw) and one given the uniforms;
- a (1, 1) gate's forward under no_grad (no autograd node) against one that records a node, and a built-in
  multiplication of the same size;
- the autograd floor: `x * p` and torch.autograd.grad of it, and the same graph through the engine directly
  (what torch.autograd.grad's Python half costs);
- the pooling of a (64, 512, 7, 7) map: ATen's mean backward (a dense map divided by S) against a copy of the
  broadcast gradient, and against picnn_ext's global_pool, whose gradient is the broadcast view;
- a torch.autograd.Function with a separate setup_context against one whose forward takes ctx.
"""
import argparse
import os
import timeit

import torch
from torch.autograd.graph import _engine_run_backward

from picnn_ext.nn import global_pool


def best(fn, number: int) -> float:
    return min(timeit.Timer(fn).repeat(number=number, repeat=9)) / number


class _WithSetupContext(torch.autograd.Function):
    @staticmethod
    def forward(x, scale):
        return x * scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scale = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class _WithCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.threads} thread(s), torch {torch.__version__}, "
          f"allocator env {({k: v for k, v in os.environ.items() if k.startswith('MALLOC_')}) or 'glibc defaults'}")
    print(f"picnn_ext CPU build: {torch.ops.picnn.build_info()}")
    gate = torch.ops.picnn.bernoulli_gate.default
    x, p, u = torch.randn(128, 64), torch.rand(128, 64), torch.rand(128, 64)
    pieces = {
        "gate forward kernel, hard, drawn (128, 64)": best(lambda: gate(x, p, True, None, None, 1), 5000),
        "gate forward kernel, hard, uniforms given": best(lambda: gate(x, p, True, u, None, 1), 5000),
        "gate forward kernel, soft (no draw)": best(lambda: gate(x, p, False, None, None, 1), 5000),
    }
    one, one_p = torch.randn(1, 1, requires_grad=True), torch.rand(1, 1, requires_grad=True)
    with torch.no_grad():  # the autograd kernel calls the CPU kernel directly: no node is made
        pieces["gate forward (1, 1) under no_grad"] = best(lambda: gate(one, one_p, True, None, None, 1), 5000)
    pieces["gate forward (1, 1) recording a node"] = best(lambda: gate(one, one_p, True, None, None, 1), 5000)
    pieces["x * p (1, 1), no grad"] = best(lambda: one.detach() * one_p.detach(), 5000)
    xg, pg, g = x.clone().requires_grad_(), p.clone().requires_grad_(), torch.randn(128, 64)
    pieces["x * p, no grad"] = best(lambda: x * p, 5000)
    pieces["x * p and torch.autograd.grad"] = best(lambda: torch.autograd.grad(xg * pg, (xg, pg), g), 5000)
    pieces["x * p and the engine called directly"] = best(
        lambda: _engine_run_backward((xg * pg,), (g,), False, False, (xg, pg), False, False), 5000)
    A = torch.randn(64, 512, 7, 7).relu()
    Ag, grad_pooled = A.clone().requires_grad_(), torch.randn(64, 512)
    broadcast = grad_pooled[:, :, None, None].expand(A.shape)
    pieces["pool: ATen mean forward (64, 512, 7, 7)"] = best(lambda: A.mean((2, 3)), 50)
    pieces["pool: ATen mean backward (dense grad / S)"] = best(lambda: broadcast / 49, 50)
    pieces["pool: copy of the broadcast gradient"] = best(lambda: broadcast.contiguous(), 50)
    pieces["pool: ATen mean forward+backward"] = best(lambda: torch.autograd.grad(Ag.mean((2, 3)), Ag, grad_pooled), 50)
    pieces["pool: global_pool forward+backward"] = best(lambda: torch.autograd.grad(global_pool(Ag, 1), Ag, grad_pooled), 50)
    small = torch.randn(4, requires_grad=True)
    pieces["autograd.Function apply, setup_context"] = best(lambda: _WithSetupContext.apply(small, 2.0), 5000)
    pieces["autograd.Function apply, forward(ctx, ...)"] = best(lambda: _WithCtx.apply(small, 2.0), 5000)
    for name, seconds in pieces.items():
        print(f"  {name:48s} {seconds * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
