"""Where the time of one small gate goes: the per-call overhead of forward+backward above the kernels.

    python benchmarks/profile_overhead.py [--shape 128 64] [--threads 1] [--calls 3000]

Times each piece by the CPU time of the calling thread (time.thread_time), not wall time, so that other
processes on a shared machine do not inflate it (on a loaded 2-core machine, wall-clock medians of a
50-microsecond call move by 2-3x between runs). All small-gate work runs on the calling thread (no parallel
region below tens of thousands of elements), so its CPU time is its cost. Best of five repeats.

- `forward kernel`, `backward kernel`: torch.ops.picnn.bernoulli_gate(_backward).default on tensors that do
  not require grad (no autograd node; the dispatcher call from Python included).
- `fused forward+backward`: ops.bernoulli_gate on tensors that require grad, then torch.autograd.grad:
  what a training step pays. Its excess over the two kernels is the per-call overhead (the Python wrapper,
  the C++ autograd node, the engine and torch.autograd.grad's own Python).
- `engine floor`: y = x * p and torch.autograd.grad of it, a one-op graph of built-in ATen ops: the cost of
  autograd.grad and a node that no custom op can go below; minus its own two multiplications' kernels.
- `eager composition`: x * (p + sg(bernoulli(p) - p)) and its gradient, as in gate_cases.py.
- `per gate in a graph of M`: M gates (each with its own p) in one graph and one torch.autograd.grad, as in a
  training step (one backward for every op): the slope of the time over M, so that what autograd.grad
  costs once per call is not charged to each op. Its excess over the two kernels is the op's own overhead
  (its autograd node, the engine's work per node, the Python wrapper).
"""
import argparse
import time
import timeit

import torch

from picnn_ext import ops


def cpu_time(fn, calls: int) -> float:
    return min(timeit.Timer(fn, timer=time.thread_time).repeat(number=calls, repeat=5)) / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs="+", default=[128, 64], help="(B, K) or (B, K, *S)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    B, K = shape[:2]
    x = torch.randn(shape, requires_grad=True)
    p = torch.rand(B, K, requires_grad=True)
    grad_y = torch.randn(shape)
    xd, pd = x.detach(), p.detach()
    forward, backward = torch.ops.picnn.bernoulli_gate.default, torch.ops.picnn.bernoulli_gate_backward.default
    _, mask = forward(xd, pd, True, None, None, 1)
    view = (B, K) + (1,) * (len(shape) - 2)

    def fused():
        y = ops.bernoulli_gate(x, p)[0]
        torch.autograd.grad(y, (x, p), grad_y)

    def engine():
        torch.autograd.grad(x * p.view(view), (x, p), grad_y)

    def eager():
        m = torch.bernoulli(p.detach())
        y = x * (p + (m - p).detach()).view(view)
        torch.autograd.grad(y, (x, p), grad_y)

    def graph_of(gates: int, op):
        ps = [torch.rand(B, K, requires_grad=True) for _ in range(gates)]

        def run():
            outputs = [op(x, q) for q in ps]
            torch.autograd.grad(outputs, (x, *ps), [grad_y] * gates)
        return run

    def per_op(op, calls):  # slope between graphs of 1 and 9 ops
        return (cpu_time(graph_of(9, op), calls // 9 + 1) - cpu_time(graph_of(1, op), calls)) / 8

    pv = pd.view(view)
    times = {
        "forward kernel": cpu_time(lambda: forward(xd, pd, True, None, None, 1), args.calls),
        "backward kernel": cpu_time(lambda: backward(grad_y, xd, mask, 1), args.calls),
        "fused forward+backward": cpu_time(fused, args.calls),
        "engine floor (x * p and its grad)": cpu_time(engine, args.calls),
        "  its kernels: 3 multiplications": cpu_time(lambda: (xd * pv, grad_y * pv, grad_y * xd), args.calls),
        "eager composition forward+backward": cpu_time(eager, args.calls),
        "per gate in a graph of M": per_op(lambda a, q: ops.bernoulli_gate(a, q)[0], args.calls),
    }
    print(f"shape {shape}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; CPU time per call, "
          f"best of 5 x {args.calls}")
    for name, seconds in times.items():
        print(f"  {name:38s} {seconds * 1e6:8.1f} us")
    kernels = times["forward kernel"] + times["backward kernel"]
    overhead = times["fused forward+backward"] - kernels
    floor = times["engine floor (x * p and its grad)"] - times["  its kernels: 3 multiplications"]
    print(f"  per-call overhead (fused - kernels)    {overhead * 1e6:8.1f} us")
    print(f"  autograd floor (engine - its kernels)  {floor * 1e6:8.1f} us")
    marginal = times["per gate in a graph of M"] - kernels
    print(f"  per-gate overhead in a graph (slope - kernels)  {marginal * 1e6:8.1f} us")
    print(f"  eager / fused                          {times['eager composition forward+backward'] / times['fused forward+backward']:8.2f}x")


if __name__ == "__main__":
    main()
