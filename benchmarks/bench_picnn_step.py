"""pytest-benchmark suite of the PICNN head's training step: picnn_ext against the authors' algorithm and the
best pure-PyTorch composition, eager and under torch.compile, side by side (picnn_step_cases.py says what each
one is; torch.compile's first step, compilation included, is recorded apart as extra_info compile_seconds).

    pytest benchmarks/bench_picnn_step.py --benchmark-json=picnn_step.json
    python benchmarks/report.py picnn_step.json

Each case is a benchmark group holding the three implementations; report.py gives the medians and each
one's time as a multiple of picnn_ext's. On CUDA every result also records the step's peak memory and
whether the step waits on the host. test_losses_agree (not a benchmark) checks first that the three compute
the same loss up to the random draws.
"""
import time

import pytest
import torch

from picnn_step_cases import (BENCHMARKED, check_losses, cuda_memory_of_step, cuda_step_synchronises,
                              default_cases, make_step)

CASES = default_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_losses_agree(case):
    check_losses(case)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("impl", BENCHMARKED)
def test_picnn_step(benchmark, case, impl):
    if impl == "compile" and case.device == "cuda" and case.bf16_autocast:
        pytest.skip("torch.compile is timed on the float32 GPU cases only (tens of seconds of compilation each)")
    benchmark.group = f"picnn_step:{case.id}"
    benchmark.extra_info.update(impl=impl, case=case.id)
    if case.device == "cuda":
        # before the timed step exists, so that its inputs do not count in the peak
        benchmark.extra_info.update(cuda_memory_of_step(case, impl))
        benchmark.extra_info["host_sync"] = cuda_step_synchronises(case, impl)
        torch.cuda.empty_cache()
    step = make_step(case, impl)
    start = time.perf_counter()
    step()  # warm-up: compilation (torch.compile), first-touch allocations, CUDA context, kernel load
    if impl == "compile":
        benchmark.extra_info["compile_seconds"] = time.perf_counter() - start
    # more rounds where a round is cheap (the GPU), for a stable median
    rounds = 200 if case.device == "cuda" else 40
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=5)
