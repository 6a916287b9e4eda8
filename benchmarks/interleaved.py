"""The gate and PICNN-step benchmarks with the implementations interleaved: round after round, each runs once,
in a fresh random order, and the medians over the rounds are compared.

pytest-benchmark times one implementation's rounds, then the next one's: on a shared or virtual machine whose
speed drifts by 2-3x over seconds (these 2-core VMs), a drift then lands on one implementation and not the
others, and their ratio moves with it. Interleaving spreads every drift over all implementations alike, so the
ratios of one run are comparable. Wall clock (time.perf_counter); compile time excluded (warm-up rounds).

    python benchmarks/interleaved.py [--rounds 60] [--json out.json]
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
    return (f"Device: {cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); allocator: {allocator_regime(machine)}; "
            f"load average at start {os.getloadavg()}; run {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")


def interleave(steps: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
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
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def gate_rows(rounds: int) -> list[dict]:
    rows = []
    for case in [c for c in gate_cases.default_cases() if c.device == "cpu"]:
        for backward in (False, True):
            impls = GATE_IMPLEMENTATIONS if backward else GATE_IMPLEMENTATIONS[:3]
            steps = {impl: gate_cases.make_step(case, impl, backward) for impl in impls}
            steps["copy"] = gate_cases.make_copy(case)
            rows.append({"bench": "gate", "direction": "forward_backward" if backward else "forward", "case": case.id,
                         "median_s": interleave(steps, rounds)})
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
            head += ["overhead (µs)", "of copy"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in selected:
            m = row["median_s"]
            cells = [row["direction"]] if bench == "gate" else []
            cells += [row["case"], f"{m[reference] * 1e3:.3f}"] + [f"{m[o] * 1e3:.3f}" for o in others]
            cells += [f"{m[o] / m[reference]:.2f}x" for o in others]
            if bench == "gate":
                overhead = f"{(m[reference] - m['kernels']) * 1e6:.1f}" if "kernels" in m else "-"
                copies = 5 if row["direction"] == "forward_backward" else 2  # tensors' worth of bytes moved
                cells += [overhead, f"{copies / 2 * m['copy'] / m[reference]:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--only", choices=("gate", "picnn_step"), default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = [] if args.only == "picnn_step" else gate_rows(args.rounds)
    rows += [] if args.only == "gate" else step_rows(args.rounds)
    print(environment_line() + f"; interleaved, {args.rounds} rounds, medians")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment_line(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
