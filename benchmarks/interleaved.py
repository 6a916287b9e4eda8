"""The gate and PICNN-step benchmarks with the implementations interleaved: round after round, each runs once,
in a fresh random order, and the medians over the rounds are compared.

pytest-benchmark times one implementation's rounds, then the next one's: on a shared or virtual machine whose
speed drifts by 2-3x over seconds (these 2-core VMs), a drift then lands on one implementation and not the
others, and their ratio moves with it. Interleaving spreads every drift over all implementations alike, so the
ratios of one run are comparable. Compile time excluded (warm-up rounds).

On the CPU a measurement is one call, timed by the wall clock (time.perf_counter). With --device cuda it is
`--calls` calls back to back between two CUDA events (device time, no host synchronisation between the calls),
over issue 7's GPU cases; torch.compile there only for the forward+backward of the cases
gate_cases.GateCase.compiled_competitor names (each compilation takes seconds).

    python benchmarks/interleaved.py [--rounds 60] [--json out.json]
    python benchmarks/interleaved.py --device cuda --only gate [--rounds 20] [--calls 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import gate_cases  # noqa: E402
import picnn_step_cases  # noqa: E402
from report import allocator_regime  # noqa: E402

GATE_IMPLEMENTATIONS = ("fused", "eager", "compile", "kernels")
STEP_CASES = [picnn_step_cases.StepCase("cpu", 64, 512, classes) for classes in (10, 1000)]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment_line() -> str:
    """The machine, torch, threads and allocator regime, as report.py words them for pytest-benchmark runs."""
    machine = {"malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
               "ld_preload": os.environ.get("LD_PRELOAD", "")}
    gpu = (f"; GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if torch.cuda.is_available() else "")
    return (f"Device: {cpu_name()}, {os.cpu_count()} CPUs{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); allocator: {allocator_regime(machine)}; "
            f"load average at start {os.getloadavg()}; run {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")


def wall_clock(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def cuda_events(calls: int):
    """A timer of `calls` back-to-back calls between two CUDA events: seconds of device time per call."""
    def timer(step) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    return timer


def interleave(steps: dict, rounds: int, warmup: int = 3, timer=wall_clock) -> dict[str, float]:
    """Median seconds of each step over `rounds` rounds, each round running every step once in a random order."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(timer(steps[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def gate_rows(rounds: int, device: str = "cpu", calls: int = 5) -> list[dict]:
    rows = []
    cuda = device == "cuda"
    cases = gate_cases.cuda_cases() if cuda else [c for c in gate_cases.default_cases() if c.device == "cpu"]
    for case in cases:
        for backward in (False, True):
            impls = list(GATE_IMPLEMENTATIONS if backward else GATE_IMPLEMENTATIONS[:3])
            if cuda and not (backward and case.compiled_competitor):
                impls.remove("compile")
            compile_seconds = None
            steps = {}
            for impl in impls:
                start = time.perf_counter()
                steps[impl] = gate_cases.make_step(case, impl, backward, synchronize=not cuda)
                steps[impl]()  # compilation happens here, in the first call
                if cuda:
                    torch.cuda.synchronize()
                if impl == "compile":
                    compile_seconds = time.perf_counter() - start
            steps["copy"] = gate_cases.make_copy(case, synchronize=not cuda)
            row = {"bench": "gate", "direction": "forward_backward" if backward else "forward", "case": case.id,
                   "bytes": case.bytes_forward_backward() if backward else case.bytes_forward(),
                   "median_s": interleave(steps, rounds, timer=cuda_events(calls) if cuda else wall_clock)}
            if compile_seconds is not None:
                row["compile_seconds"] = compile_seconds
            rows.append(row)
            if cuda:  # progress on a leased machine: each row as soon as it is measured
                print(table([row]).splitlines()[-1], flush=True)
    return rows


def step_rows(rounds: int) -> list[dict]:
    rows = []
    for case in STEP_CASES:
        steps = {impl: picnn_step_cases.make_step(case, impl) for impl in picnn_step_cases.BENCHMARKED}
        rows.append({"bench": "picnn_step", "case": case.id, "median_s": interleave(steps, max(rounds // 2, 10))})
    return rows


def table(rows: list[dict]) -> str:
    lines = []
    for bench, reference, others in (("gate", "fused", ("eager", "compile")),
                                     ("picnn_step", "picnn_ext", ("authors", "composition", "compile"))):
        selected = [row for row in rows if row["bench"] == bench]
        if not selected:
            continue
        head = ["direction"] if bench == "gate" else []
        head += ["case", f"{reference} (ms)"] + [f"{o} (ms)" for o in others] + [f"{o} / {reference}" for o in others]
        if bench == "gate":
            head += ["overhead (µs)", "GB/s", "of copy"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in selected:
            m = row["median_s"]
            cells = [row["direction"]] if bench == "gate" else []
            cells += [row["case"], f"{m[reference] * 1e3:.3f}"] + [f"{m[o] * 1e3:.3f}" if o in m else "-" for o in others]
            cells += [f"{m[o] / m[reference]:.2f}x" if o in m else "-" for o in others]
            if bench == "gate":
                overhead = f"{(m[reference] - m['kernels']) * 1e6:.1f}" if "kernels" in m else "-"
                copies = 5 if row["direction"] == "forward_backward" else 2  # tensors' worth of bytes moved
                gigabytes = f"{row['bytes'] / m[reference] / 1e9:.0f}" if "bytes" in row else "-"
                cells += [overhead, gigabytes, f"{copies / 2 * m['copy'] / m[reference]:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--only", choices=("gate", "picnn_step"), default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--calls", type=int, default=5, help="calls per CUDA-event measurement (--device cuda)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and args.only != "gate":
        parser.error("--device cuda times the gate only (--only gate); the head step is in bench_picnn_step.py")
    rows = [] if args.only == "picnn_step" else gate_rows(args.rounds, args.device, args.calls)
    rows += [] if args.only == "gate" else step_rows(args.rounds)
    timing = f"{args.calls} calls between CUDA events" if args.device == "cuda" else "wall clock"
    text = environment_line() + f"; interleaved, {args.rounds} rounds, medians; {timing}\n\n" + table(rows)
    compiled = [f"- {row['direction']} {row['case']}: {row['compile_seconds']:.1f} s" for row in rows
                if "compile_seconds" in row]
    if compiled:
        text += "\ntorch.compile's compilation (first call, excluded from the medians):\n" + "\n".join(compiled) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"environment": environment_line(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
