"""CAR of all K filters of the interpreted layer: picnn_ext's one pass (closed form) against brute force (one
pass over the data per removed filter, plus one for the network itself), DESIGN.md section 6.

The reference size is K=64 filters, N=2,000 images, C=10 classes, on the network of the digits demo (1x8x8
images, SmallConvNet width 16, 2 stages, interpreted 3x3 conv to K filters, GAP + Linear), batches of 256.

    pytest benchmarks/bench_car.py                   # pytest-benchmark tables (car-interpreted, car-inner)
    python benchmarks/bench_car.py                   # prints both times and the speed-up
    python benchmarks/bench_car.py --threads 1 --n 2000 --k 64

The brute force is the authors' definition run as written: for each filter, a forward hook zeroes its
channel of the interpreted layer's output and the whole network runs over the data. Both give the same
CAR (checked in this file, float32, to the exact counts).

Group car-inner: the same for the backbone's last conv (`backbone.4.0`, 32 filters, followed by BatchNorm and
ReLU), where picnn_ext evaluates 4 candidates per forward pass (max_batch 1024 / batch 256) through a hook and
the gate op, the network before the layer running once per batch; brute force zeroes the channel after the
ReLU, 33 passes.
"""
import argparse
import os
import time

import pytest
import torch

from picnn_ext.car import filter_importance
from picnn_ext.models import SmallConvNet
from picnn_ext.nn import PICNN

N, K, C, BATCH = 2_000, 64, 10, 256


def make_case(n=N, k=K, c=C, seed=0):
    torch.manual_seed(seed)
    backbone = SmallConvNet(1, width=16, stages=2)
    model = PICNN(backbone, backbone.out_channels, c, num_filters=k).eval()
    with torch.no_grad():  # logits decided by the filters, not by the bias: single filters then matter
        model.head.classifier.bias.zero_()
    images = torch.randn(n, 1, 8, 8)
    with torch.no_grad():
        labels = model(images).logits.argmax(dim=1)
    labels[::4] = torch.randint(0, c, labels[::4].shape)  # errors to make, so that CAR is not all zero
    data = [(images[i:i + BATCH], labels[i:i + BATCH]) for i in range(0, n, BATCH)]
    return model, data


INNER_LAYER, INNER_GATE = "backbone.4.0", "backbone.4.2"  # the backbone's last conv (32 filters), its ReLU


@torch.no_grad()
def brute_force_car(model, data, gate=None, num_filters=None):
    """(accuracy, (K,) CAR): K + 1 passes over the data, the i-th with filter i's channel zeroed at the output
    of `gate` (default: the interpreted layer, A)."""
    gate = model.interpreted if gate is None else dict(model.named_modules())[gate]
    num_filters = model.num_filters if num_filters is None else num_filters

    def accuracy(channel=None):
        hook = None
        if channel is not None:
            def zero(module, inputs, output):
                output = output.clone()
                output[:, channel] = 0
                return output
            hook = gate.register_forward_hook(zero)
        correct = total = 0
        try:
            for images, labels in data:
                correct += int((model(images).logits.argmax(dim=1) == labels).sum())
                total += labels.numel()
        finally:
            if hook is not None:
                hook.remove()
        return correct / total

    base = accuracy()
    return base, torch.tensor([base - accuracy(i) for i in range(num_filters)], dtype=torch.float64)


def picnn_ext_car(model, data):
    result = filter_importance(model, data)
    return result.accuracy, result.car


@pytest.fixture(scope="module")
def case():
    return make_case()


def test_car_agrees(case):
    model, data = case
    accuracy, car = picnn_ext_car(model, data)
    ref_accuracy, ref_car = brute_force_car(model, data)
    assert accuracy == ref_accuracy and torch.equal(car, ref_car) and car.abs().sum() > 0


@pytest.mark.benchmark(group="car-interpreted")
def test_car_picnn_ext(benchmark, case):
    model, data = case
    benchmark.extra_info["impl"] = "picnn_ext"
    benchmark(picnn_ext_car, model, data)


@pytest.mark.benchmark(group="car-interpreted")
def test_car_brute_force(benchmark, case):
    model, data = case
    benchmark.extra_info["impl"] = "brute_force"
    benchmark.pedantic(brute_force_car, args=(model, data), rounds=3, iterations=1)


def test_inner_car_agrees(case):
    model, data = case
    result = filter_importance(model, data, INNER_LAYER)
    ref_accuracy, ref_car = brute_force_car(model, data, INNER_GATE, 32)
    assert result.accuracy == ref_accuracy and torch.equal(result.car, ref_car) and result.car.abs().sum() > 0


@pytest.mark.benchmark(group="car-inner")
def test_inner_car_picnn_ext(benchmark, case):
    model, data = case
    benchmark.extra_info["impl"] = "picnn_ext"
    benchmark.pedantic(filter_importance, args=(model, data, INNER_LAYER), rounds=3, iterations=1)


@pytest.mark.benchmark(group="car-inner")
def test_inner_car_brute_force(benchmark, case):
    model, data = case
    benchmark.extra_info["impl"] = "brute_force"
    benchmark.pedantic(brute_force_car, args=(model, data, INNER_GATE, 32), rounds=3, iterations=1)


def compare(n=N, k=K, c=C, repeats=5):
    model, data = make_case(n, k, c)
    picnn_ext_car(model, data)  # warm-up
    fast = []
    for _ in range(repeats):
        start = time.perf_counter()
        accuracy, car = picnn_ext_car(model, data)
        fast.append(time.perf_counter() - start)
    slow = []
    for _ in range(2):
        start = time.perf_counter()
        ref_accuracy, ref_car = brute_force_car(model, data)
        slow.append(time.perf_counter() - start)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    malloc = {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")} or "glibc default"
    print(f"N={n} K={k} C={c} batch {BATCH}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"allocator: {malloc}, load {load} on {os.cpu_count()} cores")
    print(f"picnn_ext one pass : {min(fast):.4f} s (best of {repeats}; all: {', '.join(f'{x:.4f}' for x in fast)})")
    print(f"brute force K+1    : {min(slow):.4f} s (best of 2; all: {', '.join(f'{x:.4f}' for x in slow)})")
    print(f"speed-up           : {min(slow) / min(fast):.1f}x")
    print(f"same CAR: {torch.equal(car, ref_car) and accuracy == ref_accuracy} (accuracy {accuracy:.4f}, "
          f"{int((car != 0).sum())} of {k} filters with CAR != 0)")
    return min(slow) / min(fast)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--k", type=int, default=K)
    parser.add_argument("--c", type=int, default=C)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    compare(args.n, args.k, args.c, args.repeats)
