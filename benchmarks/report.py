"""Turn pytest-benchmark JSON files into markdown tables.

    python benchmarks/report.py gate.json [picnn_step.json mis.json ...] [--out tables.md]

Each file gets a line saying what it was measured on, then its tables:

- bernoulli_gate results (bench_bernoulli_gate.py: extra_info with a direction and the bytes moved): per case
  the median time of the fused op, of the pure-PyTorch composition run eagerly and under torch.compile
  (compilation excluded; its time in a table of its own), the ratios eager / fused and compile / fused (above
  1: the fused op is faster), for forward+backward the bare kernels' time and the per-call overhead
  fused - kernels, and the fused op's achieved GB/s for the bytes it must move against the copy bandwidth of
  the same tensor measured in the same run (so in the same allocator regime).
- every other benchmark group (bench_picnn_step.py, bench_mutual_information.py, ...): one row per group,
  the median of each implementation (extra_info["impl"], else the test's name) and its time as a multiple of
  the baseline's: picnn_ext or fused where the group has it, else the first one run. "3.00x" means the
  baseline is three times faster. Where results record CUDA peak memory and host synchronisation
  (bench_picnn_step.py on a GPU), a second table gives them.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

BASELINES = ("picnn_ext", "fused")
MIB = 2**20


def load(path):
    """machine info, date, gate rows, copy bandwidths, the other groups ({group: {impl: benchmark}}), and the
    first-call times of torch.compile ({group: seconds})."""
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)  # (direction, case) -> impl -> (median seconds, bytes)
    copies = {}
    groups = {}  # insertion-ordered: the order the benchmarks ran
    compile_times = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") or {}
        median = bench["stats"]["median"]
        if "compile_seconds" in info:
            compile_times[bench.get("group") or bench["name"]] = info["compile_seconds"]
        if "direction" in info:  # a bernoulli_gate result
            if info["impl"] == "copy":
                copies[info["case"]] = info["bytes"] / median
            else:
                rows[(info["direction"], info["case"])][info["impl"]] = (median, info["bytes"])
            continue
        group = bench.get("group") or bench["fullname"].split("::")[0]
        groups.setdefault(group, {})[info.get("impl", bench["name"])] = bench
    return data.get("machine_info", {}), data.get("datetime"), rows, copies, groups, compile_times


def _ms(seconds) -> str:
    return f"{seconds * 1e3:.3f}" if seconds is not None else "-"


def _ratio(numerator, denominator) -> str:
    return f"{numerator / denominator:.2f}x" if numerator is not None and denominator else "-"


def table(rows, copies) -> str:
    """The bernoulli_gate table (see the module docstring)."""
    lines = ["| direction | case | fused (ms) | eager (ms) | compile (ms) | eager / fused | compile / fused "
             "| kernels (ms) | overhead (µs) | fused GB/s | copy GB/s | of copy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (direction, case), impls in sorted(rows.items()):
        if "fused" not in impls:
            continue
        fused, moved = impls["fused"]
        median = {name: impls[name][0] if name in impls else None
                  for name in ("eager", "composition", "compile", "kernels")}
        eager = median["eager"] if median["eager"] is not None else median["composition"]  # older results
        kernels = median["kernels"]
        overhead = f"{(fused - kernels) * 1e6:.1f}" if kernels is not None else "-"
        achieved = moved / fused / 1e9
        copy = copies.get(case)
        copy_text = f"{copy / 1e9:.1f}" if copy else "-"
        fraction = f"{achieved / (copy / 1e9):.0%}" if copy else "-"
        lines.append(f"| {direction} | {case} | {_ms(fused)} | {_ms(eager)} | {_ms(median['compile'])} | "
                     f"{_ratio(eager, fused)} | {_ratio(median['compile'], fused)} | {_ms(kernels)} | {overhead} | "
                     f"{achieved:.1f} | {copy_text} | {fraction} |")
    return "\n".join(lines)


def compile_table(compile_times) -> str:
    """torch.compile's first call (compilation included) per benchmark, in seconds."""
    lines = ["torch.compile: first call, compilation included (not in the medians above)", "",
             "| benchmark | first call (s) |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in compile_times.items()]
    return "\n".join(lines)


def _case_names(groups):
    """Row labels: the groups without a prefix ("picnn_step:") they all share, and that prefix."""
    prefixes = {group.split(":", 1)[0] for group in groups if ":" in group}
    if len(prefixes) == 1 and all(":" in group for group in groups):
        return [group.split(":", 1)[1] for group in groups], prefixes.pop()
    return list(groups), None


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def ratio_tables(groups) -> list[str]:
    """One time table (and, where recorded, a memory table) per set of implementations compared."""
    by_impls = defaultdict(dict)  # the implementations, in run order -> {group: {impl: benchmark}}
    for group, impls in groups.items():
        by_impls[tuple(impls)][group] = impls
    tables = []
    for impl_names, members in by_impls.items():
        baseline = next((name for name in BASELINES if name in impl_names), impl_names[0])
        others = [name for name in impl_names if name != baseline]
        ordered = [baseline] + others
        cases, prefix = _case_names(members)
        caption = f"**{prefix}**: " if prefix else ""
        caption += "median time (ms)" + (f"; ratio = an implementation's median / {baseline}'s" if others else "")
        header = ["case"] + [f"{name} (ms)" for name in ordered] + [f"{name} / {baseline}" for name in others]
        lines = [caption, "", _row(header), "|---|" + "---:|" * (len(header) - 1)]
        for case, impls in zip(cases, members.values()):
            medians = {name: impls[name]["stats"]["median"] for name in ordered}
            lines.append(_row([case] + [f"{medians[name] * 1e3:.3f}" for name in ordered]
                              + [f"{medians[name] / medians[baseline]:.2f}x" for name in others]))
        tables.append("\n".join(lines))

        recorded = [impls for impls in members.values()
                    if any("peak_mem_bytes" in b["extra_info"] for b in impls.values())]
        if recorded:
            header = (["case"] + [f"{name} MiB" for name in ordered] + [f"{name} host sync" for name in ordered])
            lines = ["Peak CUDA memory of one step in MiB (in parentheses: above what the inputs and parameters "
                     "already held), and whether the step waits on the host", "",
                     _row(header), "|---|" + "---:|" * len(ordered) + "---|" * len(ordered)]
            for case, impls in zip(cases, members.values()):
                if impls not in recorded:
                    continue
                info = {name: impls[name]["extra_info"] for name in ordered}
                memory = [f"{info[n]['peak_mem_bytes'] / MIB:.1f} (+{info[n]['step_mem_bytes'] / MIB:.1f})"
                          if "peak_mem_bytes" in info[n] else "-" for n in ordered]
                sync = [{True: "yes", False: "no"}.get(info[n].get("host_sync"), "-") for n in ordered]
                lines.append(_row([case] + memory + sync))
            tables.append("\n".join(lines))
    return tables


def render(path) -> str:
    machine, when, rows, copies, groups, compile_times = load(path)
    cpu = machine.get("cpu", {})
    device = machine.get("gpu") or f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', '?')} CPUs"
    header = (f"Device: {device}; torch {machine.get('torch', '?')} ({machine.get('torch_threads', '?')} threads); "
              f"allocator: {allocator_regime(machine)}; timer {machine.get('benchmark_timer', 'default')}; "
              f"load average at start {machine.get('load_average', '?')}; run {when}")
    parts = [header]
    if rows:
        parts.append(table(rows, copies))
    parts.extend(ratio_tables(groups))
    if compile_times:
        parts.append(compile_table(compile_times))
    return "\n\n".join(parts)


def allocator_regime(machine) -> str:
    """The allocator settings the run was made under, in words."""
    preload = machine.get("ld_preload")
    malloc = machine.get("malloc_env") or {}
    if preload:
        return f"LD_PRELOAD={preload}"
    if malloc:
        settings = " ".join(f"{key}={value}" for key, value in sorted(malloc.items()))
        return f"glibc, {settings} (freed memory kept, no page faults from fresh mappings)"
    return "glibc defaults (large blocks mapped and unmapped per call)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json outputs")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    text = "\n\n".join(f"{path}:\n\n{render(path)}" if len(args.json) > 1 else render(path) for path in args.json)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
