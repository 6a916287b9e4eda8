"""pytest-benchmark suite of bernoulli_gate: fused against the pure-PyTorch composition, side by side.

    pytest benchmarks/bench_bernoulli_gate.py --benchmark-json=gate.json
    python benchmarks/report.py gate.json

Each case is a benchmark group holding the fused op, the composition and one copy of x (the bandwidth
reference); report.py turns the medians into speed-ups and fractions of the copy bandwidth.
"""
import pytest

from gate_cases import default_cases, make_copy, make_step

CASES = default_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("impl", ["fused", "composition"])
@pytest.mark.parametrize("direction", ["forward", "forward_backward"])
def test_gate(benchmark, case, impl, direction):
    step = make_step(case, impl, backward=direction == "forward_backward")
    step()  # warm-up: first-touch allocations, CUDA context, kernel load
    benchmark.group = f"{direction}:{case.id}"
    moved = case.bytes_forward_backward() if direction == "forward_backward" else case.bytes_forward()
    benchmark.extra_info.update(impl=impl, case=case.id, direction=direction, bytes=moved)
    benchmark.pedantic(step, rounds=40, warmup_rounds=5)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_copy_bandwidth(benchmark, case):
    step = make_copy(case)
    step()
    benchmark.group = f"copy:{case.id}"
    benchmark.extra_info.update(impl="copy", case=case.id, direction="copy", bytes=2 * case.numel * case.element_size)
    benchmark.pedantic(step, rounds=40, warmup_rounds=5)
