"""A ResNet-50 training step, standard (STD: torchvision's resnet50 and cross-entropy) against PICNN (the same
backbone converted by picnn_ext.models.convert: the interpreted 3x3 conv and the PICNN head, both pathways),
side by side: what PICNN costs a user on a real network (issue 7: at most 3% slower than STD).

    python benchmarks/resnet_step.py                       # GPU: B=128, 224 px, bf16 autocast, channels_last
    python benchmarks/resnet_step.py --device cpu --batch 2 --size 64 --rounds 2     # a CPU smoke run

A step is forward, loss, backward and an SGD update (momentum 0.9), with the parameters' gradients set to
None between steps. The two networks alternate round by round (interleaved, medians); on CUDA each
measurement is `--calls` steps between two CUDA events, and each network's peak memory over one step (inputs
and parameters excluded) is reported. Needs torchvision.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from interleaved import cuda_events  # noqa: E402


def make_step(model: torch.nn.Module, picnn: bool, images: torch.Tensor, targets: torch.Tensor, autocast: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    device_type = images.device.type

    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(images, targets).loss if picnn else F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def timer_for(device: torch.device, calls: int):
    """Seconds per step of `calls` steps: CUDA events on a GPU (interleaved.cuda_events), else the wall clock."""
    if device.type == "cuda":
        return cuda_events(calls)

    def timed(step) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            step()
        return (time.perf_counter() - start) / calls
    return timed


def peak_memory(step, device: torch.device) -> int | None:
    """Bytes allocated at the peak of one step above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--filters", type=int, default=512, help="K of PICNN's interpreted layer")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--no-autocast", action="store_true", help="float32 instead of bfloat16 autocast")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    from torchvision.models import resnet50  # the benchmark's one optional dependency

    from picnn_ext.models import convert

    device = torch.device(args.device)
    torch.manual_seed(0)
    std = resnet50(num_classes=args.classes)
    picnn = convert(std, args.classes, args.filters)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, args.classes, (args.batch,), device=device)
    steps = {}
    for name, model in (("std", std), ("picnn", picnn)):
        model.to(device=device, memory_format=torch.channels_last).train()
        steps[name] = make_step(model, name == "picnn", images, targets, autocast=not args.no_autocast)
    memory = {name: peak_memory(step, device) for name, step in steps.items()}  # also the warm-up
    timed = timer_for(device, args.calls)
    for step in steps.values():
        timed(step)
    times = {name: [] for name in steps}
    for round_ in range(args.rounds):
        for name in (("std", "picnn") if round_ % 2 == 0 else ("picnn", "std")):
            times[name].append(timed(steps[name]))
    median = {name: statistics.median(values) for name, values in times.items()}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [f"ResNet-50 training step on {gpu}, torch {torch.__version__}: B={args.batch}, {args.size} px, "
             f"{'float32' if args.no_autocast else 'bfloat16 autocast'}, channels_last, C={args.classes}, "
             f"PICNN K={args.filters}; {args.rounds} interleaved rounds of {args.calls} steps, medians",
             "", "| network | step (ms) | vs STD | peak memory (MiB) |", "|---|---:|---:|---:|"]
    for name in steps:
        mib = f"{memory[name] / 2**20:.0f}" if memory[name] is not None else "-"
        lines.append(f"| {name} | {median[name] * 1e3:.2f} | {median[name] / median['std']:.3f}x | {mib} |")
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"median_s": median, "peak_bytes": memory, "args": vars(args)}, indent=1,
                                        default=str))


if __name__ == "__main__":
    main()
