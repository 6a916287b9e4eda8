"""Where the skipping path's time goes, per layer: its convs and the rest (nnd_speed.py --profile).

Each gated layer and each residual block's own part (its last conv, the downsample, the residual sum) is
wrapped in a ``torch.profiler.record_function`` range; a range's conv time is the time of the
``aten::conv2d`` calls inside it, the rest is everything else (the controller, the pattern's host read and
cache lookup, the activation, the gate multiply, the dense copy). The profiler adds a few microseconds per
op, which lands in the rest.
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from picnn_ext.models.gated import GatedConv, GatedResidualBlock


def _conv_time(event) -> float:
    """Microseconds of the aten::conv2d calls under a profiler event."""
    total = 0.0
    for child in event.cpu_children:
        total += child.cpu_time_total if child.name == "aten::conv2d" else _conv_time(child)
    return total


def _torchvision_name(name: str) -> str:
    """body.0 is the stem (conv1), body.2..5 are layer1..layer4 (decouple's ResNet body)."""
    first, _, rest = name.partition(".")
    first = {"0": "conv1", "2": "layer1", "3": "layer2", "4": "layer3", "5": "layer4"}.get(first, first)
    return f"{first}.{rest}" if rest else first


def _wrapped(module, label):
    original = module.forward_skip

    def forward_skip(x, plain=False):
        with record_function(label):
            return original(x, plain=plain)

    return forward_skip


def profile_layers(net, images: torch.Tensor, memory_format=None, rounds: int = 5):
    """{"layers": [{name, total_ms, conv_ms, rest_ms}], "total_ms", "conv_ms"}: medians over ``rounds``
    profiled calls of ``net.forward_skip(images, memory_format=memory_format)``; a block's row is its own
    part (its units have theirs)."""
    names = {}
    for name, module in net.body.named_modules():
        if isinstance(module, (GatedConv, GatedResidualBlock)):
            names[module] = _torchvision_name(name)
            module.forward_skip = _wrapped(module, f"nnd:{names[module]}")
    try:
        net.forward_skip(images, memory_format=memory_format)  # warm-up: the pattern caches fill
        samples = []
        for _ in range(rounds):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                with record_function("nnd:forward"):
                    net.forward_skip(images, memory_format=memory_format)
            samples.append(_read(prof.events()))
    finally:
        for module in names:
            del module.forward_skip  # back to the class's method
    return _median(samples, list(names.values()))


def _read(events):
    times = {}
    for event in events:
        if not event.name.startswith("nnd:"):
            continue
        name = event.name[4:]
        total, conv = event.cpu_time_total, _conv_time(event)
        # A block's range holds its units' ranges: its own part is what they leave.
        for child in _descendant_ranges(event):
            total -= child.cpu_time_total
            conv -= _conv_time(child)
        times[name] = (total / 1e3, conv / 1e3)
    return times


def _descendant_ranges(event):
    """The nearest nnd: ranges below ``event``."""
    found = []
    for child in event.cpu_children:
        if child.name.startswith("nnd:"):
            found.append(child)
        else:
            found.extend(_descendant_ranges(child))
    return found


def _median(samples, order):
    def med(values):
        values = sorted(values)
        return values[len(values) // 2]

    layers = []
    for name in order:
        total = med([s[name][0] for s in samples])
        conv = med([s[name][1] for s in samples])
        layers.append({"name": name, "total_ms": total, "conv_ms": conv, "rest_ms": total - conv})
    forward = [s["forward"] for s in samples]
    return {"layers": layers, "total_ms": med([f[0] + sum(s[n][0] for n in order) for f, s in zip(forward, samples)]),
            "conv_ms": med([f[1] + sum(s[n][1] for n in order) for f, s in zip(forward, samples)])}
