"""Where the skipping path's time goes, per layer: its convs and the rest (nnd_speed.py --profile).

Each gated layer and each residual block's own part (its last conv, the downsample, the residual sum and its
ReLU) is timed with ``time.perf_counter`` around its ``forward_skip``, and so is every conv inside it
(``torch.nn.functional.conv2d``, which the skipping path calls); a layer's rest is its time less its convs'
(the controller, the pattern's host read and cache lookup, the activation with its means, the gate multiply,
the dense copy), and a block's own part is its time less its units'. The timers add well under a
microsecond a call; torch.profiler, which an earlier version used, added several per op and about doubled
the rest of a ResNet-50.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from picnn_ext.models.gated import GatedConv, GatedResidualBlock


def _torchvision_name(name: str) -> str:
    """body.0 is the stem (conv1), body.2..5 are layer1..layer4 (decouple's ResNet body)."""
    first, _, rest = name.partition(".")
    first = {"0": "conv1", "2": "layer1", "3": "layer2", "4": "layer3", "5": "layer4"}.get(first, first)
    return f"{first}.{rest}" if rest else first


class _Timers:
    """Per layer: its wall time, the part of it its nested layers took, and its own convs' time."""

    def __init__(self):
        self.stack = []
        self.total = defaultdict(float)
        self.nested = defaultdict(float)
        self.conv = defaultdict(float)

    def layer(self, module, name):
        original = module.forward_skip

        def forward_skip(x, plain=False):
            self.stack.append(name)
            start = time.perf_counter()
            try:
                return original(x, plain=plain)
            finally:
                elapsed = time.perf_counter() - start
                self.stack.pop()
                self.total[name] += elapsed
                if self.stack:
                    self.nested[self.stack[-1]] += elapsed

        return forward_skip

    def conv2d(self, original):
        def conv2d(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.conv[self.stack[-1] if self.stack else "forward"] += time.perf_counter() - start

        return conv2d

    def sample(self, names, forward_seconds):
        """{name: (own ms, conv ms)} of one forward, and "forward": (the rest outside the layers, their convs)."""
        times = {name: (1e3 * (self.total[name] - self.nested[name]), 1e3 * self.conv[name]) for name in names}
        inside = sum(self.total[name] - self.nested[name] for name in names)
        times["forward"] = (1e3 * (forward_seconds - inside), 1e3 * self.conv["forward"])
        for table in (self.total, self.nested, self.conv):
            table.clear()
        return times


def profile_layers(net, images: torch.Tensor, memory_format=None, rounds: int = 5, plain: bool = False):
    """{"layers": [{name, total_ms, conv_ms, rest_ms}], "total_ms", "conv_ms"}: medians over ``rounds``
    timed calls of ``net.forward_skip(images, memory_format=memory_format)`` (``plain``: of
    ``net.forward_plain``, the same layers without their gates); a block's row is its own part (its units
    have theirs)."""
    forward = net.forward_plain if plain else net.forward_skip
    timers = _Timers()
    names = {}
    for name, module in net.body.named_modules():
        if isinstance(module, (GatedConv, GatedResidualBlock)):
            names[module] = _torchvision_name(name)
            module.forward_skip = timers.layer(module, names[module])
    original_conv2d = F.conv2d
    F.conv2d = timers.conv2d(original_conv2d)
    try:
        forward(images, memory_format=memory_format)  # warm-up: the pattern caches fill
        timers.sample(names.values(), 0.0)
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            forward(images, memory_format=memory_format)
            samples.append(timers.sample(names.values(), time.perf_counter() - start))
    finally:
        F.conv2d = original_conv2d
        for module in names:
            del module.forward_skip  # back to the class's method
    return _median(samples, list(names.values()))


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
