"""The workloads of the NND benchmarks (bench_nnd.py).

Inference, on a trained NND (a run directory, ``NND_BENCH_RUN``, or a small one trained here on the
digits with gates pushed shut by ``tau`` and ``lambda_s``):
- `skip`: ``DecoupledNet.forward_skip``: the gates are computed before each conv, only the open filters are
  computed, from the open input channels; for a batch, the union of its samples' open filters.
- `skip_per_sample` (batch 64): the same, one sample at a time.
- `dense`: the decoupled network's own eval forward: every filter computed, then gated.
- `plain`: the same network without controllers or gates (the convs, BN and ReLU alone).

Training step (forward, NND loss, backward, Adam step) of a decoupled small CNN on 32x32 images and of a
decoupled ResNet-18 at 32 px (torchvision's where it imports, else a stand-in of the same structure):
- `fused`: the gates through the compiled ``bernoulli_gate``;
- `python`: the same op's pure-PyTorch backend (``PICNN_EXT_BACKEND=python`` set for the step);
- `compile`: the `fused` step with the model under ``torch.compile`` (one graph: the gates draw from the
  default generator; an explicit ``torch.Generator`` argument would break the graph at every gate).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from picnn_ext import _ext
from picnn_ext.models import SmallConvNet, decouple
from picnn_ext.models.gated import GatedConv

# The small NND trained when no run is given: gates pushed shut, so that there is something to skip.
TRAIN_SETTINGS = dict(method="nnd", dataset="digits", epochs=12, batch_size=16, width=16, num_filters=32,
                      lambda_s=0.01, tau=0.5)


def trained_model():
    """(model in eval mode, test split, where it came from)."""
    from picnn_ext.train import TrainConfig, train
    from picnn_ext.train.trainer import load_trained_model

    run_dir = os.environ.get("NND_BENCH_RUN")
    if not run_dir:
        import tempfile

        run_dir = train(TrainConfig(**TRAIN_SETTINGS, out_dir=tempfile.mkdtemp(), device="cpu", quiet=True))
    model, splits = load_trained_model(run_dir)
    return model, splits.test, run_dir


def plain_copy(model: nn.Module) -> nn.Module:
    """The decoupled network with every gated layer back to conv -> bn -> act, no controller, no gate."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, GatedConv):
                setattr(module, child_name, nn.Sequential(child.conv, child.bn, child.act))
    return plain.eval()


@torch.no_grad()
def check_and_measure(model, dataset):
    """Accuracy of the dense and the skipping path over ``dataset`` (they must agree), the largest logit
    difference, and the conv multiply-adds per image computed by the skipping path at batch 1 and at
    batch 64 (union of open filters), against the dense network's."""
    model.eval()
    correct = {"dense": 0, "skip": 0}
    worst = 0.0
    macs = {"batch1": [0, 0], "batch64": [0, 0]}
    for images, labels in DataLoader(dataset, batch_size=64):
        dense = model(images).logits
        skip, _, (computed, total) = model.forward_skip(images, count_macs=True)
        worst = max(worst, (dense - skip).abs().max().item())
        correct["dense"] += (dense.argmax(1) == labels).sum().item()
        correct["skip"] += (skip.argmax(1) == labels).sum().item()
        macs["batch64"][0] += computed
        macs["batch64"][1] += total
        for image in images:
            _, _, (computed, total) = model.forward_skip(image[None], count_macs=True)
            macs["batch1"][0] += computed
            macs["batch1"][1] += total
    n = len(dataset)
    return {"acc_dense": correct["dense"] / n, "acc_skip": correct["skip"] / n, "max_abs_logit_diff": worst,
            "macs_kept_batch1": macs["batch1"][0] / macs["batch1"][1],
            "macs_kept_batch64": macs["batch64"][0] / macs["batch64"][1],
            "dense_macs_per_image": macs["batch1"][1] / n}


def inference_call(model, plain, impl: str, images: torch.Tensor):
    if impl == "skip":
        return lambda: model.forward_skip(images)
    if impl == "skip_per_sample":
        return lambda: [model.forward_skip(image[None]) for image in images]
    if impl == "dense":
        return torch.no_grad()(lambda: model(images))
    if impl == "plain":
        return torch.no_grad()(lambda: plain.classifier(plain.body(images)))
    raise ValueError(impl)


# --------------------------------------------------------------------------------------------------------
# Training step


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, attribute for attribute (decouple() supplies the forward)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet18StandIn(nn.Module):
    """torchvision.models.resnet18's structure (7x7 stem, max pool, 2-2-2-2 basic blocks of 64..512)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, width in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width)))
            cin = width
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, num_classes)


def resnet18():
    """(model, where it came from)."""
    try:
        import torchvision.models

        return torchvision.models.resnet18(num_classes=10), "torchvision.models.resnet18"
    except Exception as error:  # noqa: BLE001 - torchvision missing, or its compiled ops failing to load
        return ResNet18StandIn(10), f"stand-in of the same structure (torchvision: {type(error).__name__})"


@dataclasses.dataclass(frozen=True)
class StepCase:
    network: str  # "small_cnn" or "resnet18"
    batch: int

    @property
    def id(self):
        return f"{self.network}-B{self.batch}-32px"


STEP_CASES = [StepCase("small_cnn", 64), StepCase("resnet18", 32)]


@contextlib.contextmanager
def backend(name: str):
    saved = _ext.BACKEND
    _ext.BACKEND = name
    try:
        yield
    finally:
        _ext.BACKEND = saved


def make_step(case: StepCase, impl: str):
    """A closure running one training step; and where the network came from."""
    torch.manual_seed(0)
    if case.network == "small_cnn":
        model, source = decouple(SmallConvNet(3, width=16, stages=3), 10), "SmallConvNet(3, width=16, stages=3)"
    else:
        base, source = resnet18()
        model = decouple(base)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(case.batch, 3, 32, 32)
    targets = torch.randint(0, 10, (case.batch,))
    net = torch.compile(model) if impl == "compile" else model
    mode = "python" if impl == "python" else "auto"

    def step():
        with backend(mode):
            # The default generator: a torch.Generator argument is a graph break for torch.compile.
            loss = net(images, targets).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss

    return step, source


def interleaved_steps(rounds: int = 15):
    """Median step time of `fused` and `python`, alternating one step of each, so that a shared machine's
    load falls on both alike: {case id: (fused ms, python ms)}."""
    import time

    results = {}
    for case in STEP_CASES:
        steps = {impl: make_step(case, impl)[0] for impl in ("fused", "python")}
        times = {impl: [] for impl in steps}
        for _ in range(2):
            for step in steps.values():
                step()
        for _ in range(rounds):
            for impl, step in steps.items():
                start = time.perf_counter()
                step()
                times[impl].append(time.perf_counter() - start)
        results[case.id] = tuple(1e3 * sorted(times[impl])[rounds // 2] for impl in ("fused", "python"))
    return results


if __name__ == "__main__":
    for case_id, (fused, python) in interleaved_steps().items():
        print(f"{case_id}: fused {fused:.1f} ms, python {python:.1f} ms, python / fused {python / fused:.2f}x")
