"""Turn a pytest-benchmark JSON file into a markdown table of medians, speed-ups and bandwidth.

    python benchmarks/report.py gate.json [--out table.md]

For every case: the median time of the fused op and of the pure-PyTorch composition, the speed-up
(composition / fused), the fused op's achieved GB/s for the bytes it must move, and that as a fraction of
the measured copy bandwidth of the same tensor.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)  # (direction, case) -> impl -> (median seconds, bytes)
    copies = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        median = bench["stats"]["median"]
        if info["impl"] == "copy":
            copies[info["case"]] = info["bytes"] / median
        else:
            rows[(info["direction"], info["case"])][info["impl"]] = (median, info["bytes"])
    return data.get("machine_info", {}), data.get("datetime"), rows, copies


def table(rows, copies) -> str:
    lines = ["| direction | case | fused (ms) | composition (ms) | speed-up | fused GB/s | copy GB/s | of copy |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (direction, case), impls in sorted(rows.items()):
        if "fused" not in impls or "composition" not in impls:
            continue
        fused, moved = impls["fused"]
        composition, _ = impls["composition"]
        achieved = moved / fused / 1e9
        copy = copies.get(case)
        copy_text = f"{copy / 1e9:.1f}" if copy else "-"
        fraction = f"{achieved / (copy / 1e9):.0%}" if copy else "-"
        lines.append(f"| {direction} | {case} | {fused * 1e3:.3f} | {composition * 1e3:.3f} | "
                     f"{composition / fused:.2f}x | {achieved:.1f} | {copy_text} | {fraction} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    machine, when, rows, copies = load(args.json)
    cpu = machine.get("cpu", {})
    device = machine.get("gpu") or f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', '?')} CPUs"
    header = (f"Device: {device}; torch {machine.get('torch', '?')} ({machine.get('torch_threads', '?')} threads); "
              f"malloc settings {machine.get('malloc_env') or 'default'}; run {when}\n\n")
    text = header + table(rows, copies)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
