"""The skipping path's fixed cost per gated layer, piece by piece (the figures behind BENCHMARKS.md, "NND's
acceleration", "Why, measured"):

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python benchmarks/nnd_pieces.py

1. a small op alone and after a cache flush: the mean of a 512x7x7 map, timed warm and after writing 80 MB;
2. at 100% open, batch 1, for each network and thread count: per forward, the time of the controllers
   (``gates_of_map``, the fused op) and of the gated layers in all, on the skipping path and on plain;
3. the controller in place, batch 1, 1 thread: the fused op against the composition it replaces (mean, two
   Linears, ReLU), each computed in every gated layer of a forward, in both orders;
4. the layout, ResNet-50 at 25% and 100% open, 2 threads, batch 1 and 32: forward_plain and forward_skip with
   the maps contiguous and channels_last (the paths' default on the CPU), interleaved round by round;
5. the activation both paths run, relu_mean_, against torch.relu_ (a unit's ReLU) and add_ + relu_ (a
   block's residual sum), on the channels_last maps of a ResNet-50 forward at batch 1, summed per forward.
All wall clock, medians or sums over 20 forwards after 3 of warm-up (4: medians of 9 rounds at batch 1, 3 at
batch 32).
"""
import statistics
import sys
import time
from collections import defaultdict

import torch

from nnd_speed import allocator_regime, nets_by_share
from picnn_ext.models import gated, skip
from picnn_ext.nn.controller import ArchitectureController
from picnn_ext.ops import relu_mean_

FORWARDS = 20


def small_op_cold():
    x = torch.relu(torch.randn(1, 512, 7, 7))
    big = torch.randn(20_000_000)
    result = {}
    for label, between in (("warm", lambda: None), ("after an 80 MB write", lambda: big.add_(1.0))):
        times = []
        for _ in range(100):
            between()
            start = time.perf_counter()
            x.mean((2, 3))
            times.append(time.perf_counter() - start)
        result[label] = 1e6 * statistics.median(times)
    return result


def timed_forwards(net, call, wrap):
    """Sum per forward of the wrapped methods' times."""
    totals = defaultdict(float)
    originals = []
    for cls, name, key in wrap:
        original = getattr(cls, name)
        originals.append((cls, name, original))

        def timed(*args, _original=original, _key=key, **kwargs):
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            totals[_key] += time.perf_counter() - start
            return out

        setattr(cls, name, timed)
    try:
        for _ in range(3):
            call()
        totals.clear()
        for _ in range(FORWARDS):
            call()
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
    return {key: 1e3 * value / FORWARDS for key, value in totals.items()}


def controller_in_place(net, images, order):
    """ms per forward of the fused controller and of the composition, both computed in every gated layer."""
    totals = defaultdict(float)
    original = gated.GatedConv.forward_skip

    def forward_skip(self, x, plain=False):
        c = self.controller
        ways = {"fused": lambda: c.gates_of_map(x.values, x.index),
                "composition": lambda: c.logits_from_pooled(x.values.mean(dim=(2, 3)), x.index)}
        for name in order:
            start = time.perf_counter()
            ways[name]()
            totals[name] += time.perf_counter() - start
        return original(self, x, plain)

    gated.GatedConv.forward_skip = forward_skip
    try:
        for _ in range(3):
            net.forward_skip(images)
        totals.clear()
        for _ in range(FORWARDS):
            net.forward_skip(images)
    finally:
        gated.GatedConv.forward_skip = original
    return {name: 1e3 * totals[name] / FORWARDS for name in order}


def main():
    print(f"torch {torch.__version__}; allocator: {allocator_regime()}")
    torch.set_num_threads(1)
    print("mean of a 512x7x7 map, us:", {k: round(v, 1) for k, v in small_op_cold().items()})
    images = torch.randn(1, 3, 224, 224)
    wrap = [(ArchitectureController, "gates_of_map", "controllers"), (gated.GatedConv, "forward_skip", "gated layers"),
            (skip.FoldedConv, "__call__", "folded convs")]
    for name in ("resnet18", "resnet50"):
        base, nets = nets_by_share(name, [1.0])
        net = nets[1.0]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            skip_ms = timed_forwards(net, lambda: net.forward_skip(images), wrap)
            plain_ms = timed_forwards(base, lambda: base.forward_plain(images), wrap)
            print(f"{name} B=1 100% open, {threads} thread(s), ms per forward: skip "
                  f"{ {k: round(v, 3) for k, v in skip_ms.items()} }, plain { {k: round(v, 3) for k, v in plain_ms.items()} }")
        torch.set_num_threads(1)
        for order in (("fused", "composition"), ("composition", "fused")):
            ms = controller_in_place(net, images, order)
            print(f"{name} B=1 1 thread, controllers in place ({' first, '.join(order)} second), ms per forward: "
                  f"{ {k: round(v, 3) for k, v in ms.items()} }")
    layouts()
    for threads in (1, 2):
        activations(threads)
    return 0


# The (C, H, W) maps of a ResNet-50 at 224 px and how many times a forward activates each: the units' ReLU,
# and the blocks' residual sum and ReLU.
UNIT_MAPS = {(64, 112, 112): 1, (64, 56, 56): 6, (128, 56, 56): 1, (128, 28, 28): 7, (256, 28, 28): 1,
             (256, 14, 14): 11, (512, 14, 14): 1, (512, 7, 7): 5}
BLOCK_MAPS = {(256, 56, 56): 3, (512, 28, 28): 4, (1024, 14, 14): 6, (2048, 7, 7): 3}


def activations(threads):
    torch.set_num_threads(threads)

    def median_ms(call, rounds=200):
        for _ in range(10):
            call()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            call()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)

    totals = defaultdict(float)
    for maps, residual in ((UNIT_MAPS, False), (BLOCK_MAPS, True)):
        for shape, count in maps.items():
            x = torch.randn(1, *shape).contiguous(memory_format=torch.channels_last)
            r = torch.randn_like(x) if residual else None
            part = "blocks" if residual else "units"
            totals[f"{part} relu_mean_"] += count * median_ms(lambda: relu_mean_(x, r))
            torch_ops = (lambda: torch.relu_(x.add_(r))) if residual else (lambda: torch.relu_(x))
            totals[f"{part} {'add_+relu_' if residual else 'relu_'}"] += count * median_ms(torch_ops)
    print(f"resnet50 B=1 {threads} thread(s), activations on channels_last maps, ms per forward: "
          f"{ {k: round(v, 3) for k, v in totals.items()} }")


def layouts():
    torch.set_num_threads(2)
    base, nets = nets_by_share("resnet50", [1.0, 0.25])
    for batch, rounds in ((1, 9), (32, 3)):
        images = torch.randn(batch, 3, 224, 224)
        calls = {}
        for label, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            calls[f"plain {label}"] = (lambda m: lambda: base.forward_plain(images, memory_format=m))(memory_format)
            for share, net in nets.items():
                calls[f"skip@{share:.0%} {label}"] = (
                    lambda n, m: lambda: n.forward_skip(images, memory_format=m))(net, memory_format)
        for call in calls.values():
            call()
        times = defaultdict(list)
        for _ in range(rounds):
            for label, call in calls.items():
                start = time.perf_counter()
                call()
                times[label].append(1e3 * (time.perf_counter() - start))
        print(f"resnet50 B={batch} 2 threads, layouts, median ms: "
              f"{ {k: round(statistics.median(v), 2) for k, v in times.items()} }")


if __name__ == "__main__":
    sys.exit(main())
