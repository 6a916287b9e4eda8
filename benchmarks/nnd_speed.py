"""NND's acceleration on real-size networks: the skipping path against the plain network, side by side.

    python benchmarks/nnd_speed.py                      # the whole table (ResNet-18/50, B 1/32, 1/2 threads)
    python benchmarks/nnd_speed.py --models resnet18 --batches 1 --threads 1 --rounds 5
    python benchmarks/nnd_speed.py --markdown --json nnd_speed.json --profile

torchvision's ResNet-18 and ResNet-50 (random weights, 1000 classes) are decoupled, and every gated layer's
gates are set by hand to a fixed choice of filters (a seeded random subset of ``share`` of them, the same for
every input: the controller still runs, its output is fixed by its biases), since the speed does not depend
on how the gates were learned. For each batch size, thread count and share, these run interleaved, round by
round, the order reversed every other round (``--interleave all``: plain and every share in each round):
- ``plain``: ``DecoupledNet.forward_plain``, the network without gates: every filter, no controller, each
  conv's batch norm folded in;
- ``skip@S``: ``DecoupledNet.forward_skip`` with ``S`` of each gated layer's filters open: the controllers,
  and the convs of the open filters from the open input channels.
Reported per case: the median time of each, the speed-up ``plain / skip`` (the median of the per-round
ratios), and the ratio of conv multiply-adds ``plain / skip`` that the skipping path counts; the target is a
speed-up of at least half the multiply-add ratio, and at least 0.95x at 100% open. ``--profile`` adds, for
one case per network, the time of each gated layer and block split into its convs and the rest
(nnd_profile.py: wall-clock timers around each layer and conv). Both paths run the maps in the layout
``--memory-format`` says (auto: the paths' default, channels_last on the CPU).

The allocator regime is printed: run with ``MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=4294967296`` to keep glibc from mapping and unmapping large tensors on every call.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nnd_profile import profile_layers  # noqa: E402

from picnn_ext.models import decouple  # noqa: E402
from picnn_ext.models.gated import GatedConv  # noqa: E402

SHARES = (1.0, 0.75, 0.5, 0.25)
# --memory-format: what forward_skip and forward_plain are told (None: their default, channels_last on the CPU)
MEMORY_FORMATS = {"auto": None, "contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def set_open_share(net, share: float, seed: int = 0) -> None:
    """Every gated layer opens the same ``share`` of its filters for every input (a seeded random choice):
    the controller's hidden units are 1 (W1 = 0, b1 = 1) and W2 = 0, so z = b2, +1 on the open filters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for unit in net.gated_layers:
            controller = unit.controller
            k = unit.out_channels
            opened = torch.randperm(k, generator=generator)[:max(1, round(share * k))]
            controller.fc1.weight.zero_()
            controller.fc1.bias.fill_(1.0)
            controller.fc2.weight.zero_()
            controller.fc2.bias.fill_(-1.0)
            controller.fc2.bias[opened] = 1.0


def randomise_statistics(net, seed: int = 0) -> None:
    """Running statistics that are not the identity, so that folding the batch norms does something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)


def build(name: str):
    import torchvision.models

    torch.manual_seed(0)
    net = decouple(getattr(torchvision.models, name)(num_classes=1000))
    randomise_statistics(net)
    return net.eval()


def nets_by_share(name: str, shares):
    base = build(name)
    nets = {}
    for share in shares:
        net = copy.deepcopy(base)
        set_open_share(net, share)
        nets[share] = net
    return base, nets


def time_call(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure_case(base, nets, images, rounds: int, memory_format, interleave: str = "pairs"):
    """{share: {plain_ms, skip_ms, speedup}}: median times and the median of the per-round ratios plain / skip.
    ``interleave="pairs"``: for each share in turn, plain and skip@share alternate round by round, two
    networks in memory, as one network is in use; ``"all"``: plain and every skip@share in each round, five
    networks whose weights (ResNet-50: 100 MB each) push each other out of the caches, so that every
    forward starts cold (a harder case for the skipping path, whose controllers add 8 MB of weights)."""
    plain = lambda: base.forward_plain(images, memory_format=memory_format)  # noqa: E731
    skips = {share: (lambda n: lambda: n.forward_skip(images, memory_format=memory_format))(net)
             for share, net in nets.items()}
    groups = [[share] for share in nets] if interleave == "pairs" else [list(nets)]
    result = {}
    for group in groups:
        calls = {"plain": plain, **{share: skips[share] for share in group}}
        for call in calls.values():  # warm-up: the pattern caches fill, oneDNN picks its kernels
            call()
            call()
        times = {impl: [] for impl in calls}
        order = list(calls)
        for round_index in range(rounds):
            # every other round in reverse order, so that a drift of the machine's speed within a round (seen
            # here: the same conv at 23 and at 31 ms, seconds apart) does not always favour the same path
            for impl in (order if round_index % 2 == 0 else order[::-1]):
                times[impl].append(time_call(calls[impl]))
        for share in group:
            ratios = [p / s for p, s in zip(times["plain"], times[share])]
            result[share] = {"plain_ms": 1e3 * statistics.median(times["plain"]),
                             "skip_ms": 1e3 * statistics.median(times[share]), "speedup": statistics.median(ratios)}
    return result


def macs_of(base, nets, images):
    """{share: (plain multiply-adds, skip multiply-adds)} of the convs, and the check that at every share
    the skipping path equals the dense gated network and that plain equals the skipping path at 100%."""
    plain_logits, plain_macs = base.forward_plain(images, count_macs=True)
    out = {}
    for share, net in nets.items():
        logits, _, (computed, dense) = net.forward_skip(images, count_macs=True)
        reference = net(images).logits
        error = (logits - reference).abs().max().item()
        scale = reference.abs().max().item()
        if error > 1e-4 * max(1.0, scale):
            raise AssertionError(f"skip@{share} differs from the dense gated network by {error}")
        if share == 1.0:
            gap = (logits - plain_logits).abs().max().item()
            if gap > 1e-4 * max(1.0, scale):
                raise AssertionError(f"skip@1.0 differs from plain by {gap}")
        if dense != plain_macs:
            raise AssertionError(f"the dense multiply-adds {dense} differ from plain's {plain_macs}")
        out[share] = (plain_macs, computed)
    return out


def compile_check(name: str, share: float, size: int, rounds: int = 7):
    """torch.compile of the skipping path and of plain, batch 1, 1 thread: compile seconds (first call
    included) and median ms of all four, interleaved. The gate pattern decides the convs' shapes, so dynamo
    breaks the graph at each layer's host read and recompiles per shape."""
    torch.set_num_threads(1)
    base, nets = nets_by_share(name, [share])
    net = nets[share]
    images = torch.randn(1, 3, size, size)
    calls = {"plain": lambda: base.forward_plain(images), "skip": lambda: net.forward_skip(images)}
    seconds = {}
    for impl, function in (("plain compiled", base.forward_plain), ("skip compiled", net.forward_skip)):
        compiled = torch.compile(function)
        start = time.perf_counter()
        compiled(images)
        seconds[impl] = time.perf_counter() - start
        calls[impl] = (lambda c: lambda: c(images))(compiled)
    for call in calls.values():
        call()
    times = {impl: [] for impl in calls}
    for _ in range(rounds):
        for impl, call in calls.items():
            times[impl].append(time_call(call))
    result = {impl: {"ms": 1e3 * statistics.median(t), "compile_s": seconds.get(impl)} for impl, t in times.items()}
    for impl, row in result.items():
        extra = f", compile {row['compile_s']:.1f} s" if row["compile_s"] is not None else ""
        print(f"torch.compile check {name} B=1 threads=1 open={share:.0%}: {impl} {row['ms']:.2f} ms{extra}")
    return result


def allocator_regime() -> str:
    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if mmap and trim:
        return f"glibc malloc, MALLOC_MMAP_THRESHOLD_={mmap} MALLOC_TRIM_THRESHOLD_={trim} (memory kept)"
    return "glibc malloc defaults (large tensors mapped and unmapped on every call)"


def run(args):
    rows = []
    profiles = {}
    started = time.perf_counter()
    for name in args.models:
        base, nets = nets_by_share(name, args.shares)
        for batch in args.batches:
            images = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
            torch.set_num_threads(max(args.threads))
            checked = images[:2]  # fixed gates: the multiply-adds scale with the batch, the ratio does not
            macs = macs_of(base, nets, checked)
            for threads in args.threads:
                torch.set_num_threads(threads)
                rounds = args.rounds or (25 if batch == 1 else 5)
                measured = measure_case(base, nets, images, rounds, MEMORY_FORMATS[args.memory_format],
                                        args.interleave)
                for share in args.shares:
                    plain_macs, skip_macs = macs[share]
                    rows.append(dict(model=name, batch=batch, threads=threads, share=share, rounds=rounds,
                                     **measured[share],
                                     mac_ratio=plain_macs / skip_macs,
                                     gmacs_per_image=plain_macs / 1e9 / checked.shape[0]))
                    row = rows[-1]
                    row["target"] = max(0.95 if share == 1.0 else 0.0, row["mac_ratio"] / 2)
                    row["met"] = row["speedup"] >= row["target"]
                    print(format_row(row), flush=True)
        if args.profile:
            torch.set_num_threads(1)
            share = 0.5 if 0.5 in nets else args.shares[-1]
            images = torch.randn(1, 3, args.size, args.size)
            memory_format = MEMORY_FORMATS[args.memory_format]
            profiles[name] = profile_layers(nets[share], images, memory_format)
            profiles[name]["plain"] = profile_layers(base, images, memory_format, plain=True)
            profiles[name]["case"] = f"batch 1, 1 thread, {share:.0%} open"
    return rows, profiles, time.perf_counter() - started


def format_row(row) -> str:
    return (f"{row['model']:9s} B={row['batch']:<3d} threads={row['threads']} open={row['share']:4.0%}  "
            f"plain {row['plain_ms']:9.2f} ms  skip {row['skip_ms']:9.2f} ms  speed-up {row['speedup']:5.2f}x  "
            f"MACs plain/skip {row['mac_ratio']:5.2f}x  target {row['target']:4.2f}x  "
            f"{'met' if row['met'] else 'MISSED'}")


def markdown(rows, profiles) -> str:
    lines = ["| network | batch | threads | open | plain ms | skip ms | speed-up plain/skip | MACs plain/skip | "
             "target | met |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['batch']} | {row['threads']} | {row['share']:.0%} | "
                     f"{row['plain_ms']:.2f} | {row['skip_ms']:.2f} | {row['speedup']:.2f}x | "
                     f"{row['mac_ratio']:.2f}x | {row['target']:.2f}x | {'yes' if row['met'] else 'no'} |")
    for name, profile in profiles.items():
        lines += ["", f"Per layer, {name}, {profile['case']} (wall-clock timers; ms; plain: the same layer without "
                  "its gates):", "",
                  "| layer | skip total | skip convs | skip rest | rest share | plain convs | plain rest |",
                  "|---|---|---|---|---|---|---|"]
        plain = {layer["name"]: layer for layer in profile["plain"]["layers"]}
        for layer in profile["layers"]:
            other = plain[layer["name"]]
            lines.append(f"| {layer['name']} | {layer['total_ms']:.3f} | {layer['conv_ms']:.3f} | "
                         f"{layer['rest_ms']:.3f} | {layer['rest_ms'] / max(layer['total_ms'], 1e-9):.0%} | "
                         f"{other['conv_ms']:.3f} | {other['rest_ms']:.3f} |")
        whole = profile["plain"]
        lines.append(f"| **forward** | {profile['total_ms']:.3f} | {profile['conv_ms']:.3f} | "
                     f"{profile['total_ms'] - profile['conv_ms']:.3f} | "
                     f"{1 - profile['conv_ms'] / profile['total_ms']:.0%} | {whole['conv_ms']:.3f} | "
                     f"{whole['total_ms'] - whole['conv_ms']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"], choices=["resnet18", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--shares", nargs="+", type=float, default=list(SHARES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=0, help="rounds per case (default 25 at batch 1, else 5)")
    parser.add_argument("--interleave", choices=["pairs", "all"], default="pairs",
                        help="pairs: plain and one skip@share alternate, share by share; all: plain and every "
                             "share in each round (five networks in memory)")
    parser.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="auto",
                        help="the maps' layout on both paths (auto: the paths' default, channels_last on the CPU)")
    parser.add_argument("--profile", action="store_true", help="per-layer convs and rest, batch 1, 1 thread")
    parser.add_argument("--compile", action="store_true",
                        help="also torch.compile the skipping path and plain (first model, batch 1, 1 thread, 50%%)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", help="write the rows and profiles here")
    args = parser.parse_args(argv)
    for name, values in (("--batches", args.batches), ("--threads", args.threads)):
        if any(v < 1 for v in values):
            parser.error(f"{name} must be positive integers, got {values}")
    if any(not 0 < s <= 1 for s in args.shares):
        parser.error(f"--shares must lie in (0, 1], got {args.shares}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"allocator: {allocator_regime()}; images {args.size} px, "
          f"memory format {args.memory_format}, interleaved {args.interleave}", flush=True)
    rows, profiles, seconds = run(args)
    compiled = compile_check(args.models[0], 0.5, args.size) if args.compile else None
    print(f"total {seconds:.0f} s")
    if args.markdown:
        print(markdown(rows, profiles))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"allocator": allocator_regime(), "torch": torch.__version__, "seconds": seconds,
                       "memory_format": args.memory_format, "interleave": args.interleave, "rows": rows,
                       "profiles": profiles, "compile": compiled}, f, indent=1)
    return 0 if all(row["met"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
