"""Shared pieces of the CAR tests: small float64 networks and data, and brute-force references."""
import copy
import functools

import pytest
import torch
from torch import nn

from picnn_ext.car import FilterImportance
from picnn_ext.models import SmallConvNet
from picnn_ext.nn import PICNN

C, K, N = 4, 6, 90


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 networks: one intra-op thread is many times faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_data(seed=1, n=N, batch=16):
    """Noisy images of C classes (class c: a bright quadrant c), in batches (the last one short)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    images = 1.5 * torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=generator)
    for c in range(C):
        rows, cols = divmod(c, 2)
        images[labels == c, :, 4 * rows:4 * rows + 4, 4 * cols:4 * cols + 4] += 1.0
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, n, batch)]


def trained(model, steps=40):
    """A few Adam steps (float32, for speed) on other images of the same kind: filters that matter, and
    errors left to make; returned in float64."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    model.float().train()
    for step in range(steps):
        images, labels = make_data(seed=100 + step, n=32, batch=32)[0]
        loss = nn.functional.cross_entropy(logits_of(model, images.float()), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.double().eval()


@functools.lru_cache(maxsize=None)
def _trained_picnn(seed, max_pool_head):
    torch.manual_seed(seed)
    backbone = SmallConvNet(1, width=4, stages=2)
    # Max pooling is not linear: a head without the closed form.
    classifier = nn.Sequential(nn.Conv2d(K, C, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten()) if max_pool_head else None
    return trained(PICNN(backbone, backbone.out_channels, C, num_filters=K, classifier=classifier))


def make_picnn(seed=0, max_pool_head=False):
    return copy.deepcopy(_trained_picnn(seed, max_pool_head))


def logits_of(model, images):
    out = model(images)
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def reference_accuracies(model, data, module, num_channels, mask=None, pre=False, channel_dim=1):
    """(correct, per-class correct, per-class count) of the model with each single channel of `module`'s
    output (or, pre=True, input) zeroed, plus the model itself: the authors' definition, one pass per filter.
    `mask` zeroes more channels throughout."""
    base_mask = torch.ones(num_channels, dtype=torch.float64) if mask is None else mask.double()

    def run(channel_mask):
        def scale(tensor):
            shape = [1] * tensor.dim()
            shape[channel_dim] = num_channels
            return tensor * channel_mask.view(shape)
        if pre:
            handle = module.register_forward_pre_hook(lambda m, inputs: (scale(inputs[0]),))
        else:
            handle = module.register_forward_hook(lambda m, inputs, output: scale(output))
        correct = torch.zeros(C, dtype=torch.float64)
        count = torch.zeros(C, dtype=torch.float64)
        try:
            for images, labels in data:
                hit = (logits_of(model, images).argmax(1) == labels).double()
                correct.index_add_(0, labels, hit)
                count.index_add_(0, labels, torch.ones_like(hit))
        finally:
            handle.remove()
        return correct, count

    base_correct, count = run(base_mask)
    removed = []
    for i in range(num_channels):
        channel_mask = base_mask.clone()
        channel_mask[i] = 0
        removed.append(run(channel_mask)[0])
    return base_correct, torch.stack(removed), count


def check_against_reference(result: FilterImportance, reference):
    base_correct, removed_correct, count = reference
    accuracy = base_correct.sum() / count.sum()
    removed_accuracy = removed_correct.sum(1) / count.sum()
    assert result.num_samples == int(count.sum())
    assert torch.equal(result.class_counts, count.long())
    assert result.accuracy == float(accuracy)
    assert torch.equal(result.removed_accuracy, removed_accuracy)
    assert torch.equal(result.car, accuracy - removed_accuracy)
    assert torch.equal(result.class_car, base_correct / count - removed_correct / count)
    # Not a vacuous comparison: some filters matter, some classes differ.
    assert result.car.abs().sum() > 0 and (result.class_car != result.car[:, None]).any()


def zeroed_logits(model, images, reader, filters, channels):
    mask = torch.ones(channels, dtype=torch.float64)
    mask[filters] = 0
    handle = reader.register_forward_pre_hook(lambda m, inputs: (inputs[0] * mask.view(1, -1, *[1] * (inputs[0].dim() - 2)),))
    try:
        with torch.no_grad():
            return logits_of(model, images)
    finally:
        handle.remove()
