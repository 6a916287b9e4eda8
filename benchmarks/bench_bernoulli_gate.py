"""pytest-benchmark suite of bernoulli_gate: the fused op against the pure-PyTorch composition, eager and
under torch.compile, side by side (gate_cases.py says what each implementation is).

    pytest benchmarks/bench_bernoulli_gate.py --benchmark-json=gate.json
    python benchmarks/report.py gate.json
    bash benchmarks/run_cpu_suite.sh OUT_DIR     # both allocator regimes, gate and PICNN step, with tables

Each case is a benchmark group holding the fused op, the eager and the compiled composition, the bare
kernels (forward+backward), and one copy of x (the bandwidth reference, measured in the same process, so in
the same allocator regime); report.py turns the medians into ratios and fractions of the copy bandwidth.
torch.compile's compilation runs in the warm-up call and is recorded apart (extra_info compile_seconds).
"""
import time

import pytest

from gate_cases import IMPLEMENTATIONS, default_cases, make_copy, make_step

CASES = default_cases()


def iterations(case) -> int:
    """Calls per timed round: a round of a small case (tens of microseconds a call) lasts a few milliseconds."""
    return 50 if case.numel < 100_000 else 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS + ("kernels",))
@pytest.mark.parametrize("direction", ["forward", "forward_backward"])
def test_gate(benchmark, case, impl, direction):
    if impl == "kernels" and direction == "forward":
        pytest.skip("the bare kernels are timed for forward+backward only")
    if impl == "compile" and not case.compiled_competitor:
        pytest.skip("torch.compile is timed on a subset of the GPU cases (gate_cases.GateCase.compiled_competitor)")
    step = make_step(case, impl, backward=direction == "forward_backward")
    start = time.perf_counter()
    step()  # warm-up: compilation (torch.compile), first-touch allocations, CUDA context, kernel load
    first_call = time.perf_counter() - start
    benchmark.group = f"{direction}:{case.id}"
    moved = case.bytes_forward_backward() if direction == "forward_backward" else case.bytes_forward()
    benchmark.extra_info.update(impl=impl, case=case.id, direction=direction, bytes=moved)
    if impl == "compile":
        benchmark.extra_info["compile_seconds"] = first_call
    benchmark.pedantic(step, rounds=40, iterations=iterations(case), warmup_rounds=5)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_copy_bandwidth(benchmark, case):
    step = make_copy(case)
    step()
    benchmark.group = f"copy:{case.id}"
    benchmark.extra_info.update(impl="copy", case=case.id, direction="copy", bytes=2 * case.numel * case.element_size)
    benchmark.pedantic(step, rounds=40, iterations=iterations(case), warmup_rounds=5)
