"""Tests of CSG (DESIGN.md section 4): the head against a small pure-PyTorch version of the authors'
algorithm (loss and gradients, in float64), the projection, the schedule, training from the trainer, and
bad input."""

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from picnn_ext.data import load_dataset
from picnn_ext.models import SmallConvNet, convert
from picnn_ext.nn import CSG, CSGHead, project_gates
from picnn_ext.train import TrainConfig, load_summary, train
from picnn_ext.train.checkpoint import load_checkpoint, read_json_lines
from picnn_ext.train.methods import is_csg_epoch

C, K = 5, 12


# ---- the authors' algorithm, written out -----------------------------------------------------------------

def reference_csg_loss(A, targets, G, W, b, density, lam_reg):
    """CE(W (G[y] * GAP(A)) + b, y) + lam_reg * max(0, sum|G| - density * C * K), with plain tensor ops."""
    pooled = A.mean(dim=(2, 3))
    gate = G[targets].clamp(0, 1)
    logits = (gate * pooled) @ W.t() + b
    hinge = torch.clamp(G.abs().sum() - density * G.shape[0] * G.shape[1], min=0)
    return F.cross_entropy(logits, targets) + lam_reg * hinge, logits


def reference_projection(G):
    out = G.clone()
    for k in range(G.shape[1]):
        top = G[:, k].max()
        column = G[:, k] / top if top > 0 else G[:, k]
        out[:, k] = column.clamp(0, 1)
    return out


def random_head(init=0.5, density=0.2, lam_reg=1e-3, **kwargs):
    torch.manual_seed(0)
    head = CSGHead(K, C, init=init, density=density, lam_reg=lam_reg, **kwargs).double()
    with torch.no_grad():  # gates spread over [0, 1], so that the gate does not act as a constant
        head.G.copy_(torch.rand(C, K, dtype=torch.float64))
    return head


@pytest.mark.parametrize("lam_reg, density", [(1e-3, 0.2), (0.5, 0.9), (0.0, 0.2)])
def test_csg_loss_and_gradients_equal_the_reference(lam_reg, density):
    head = random_head(density=density, lam_reg=lam_reg).train()
    A = torch.randn(6, K, 3, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 4, 1])
    out = head(A, targets)
    G_ref = head.G.detach().clone().requires_grad_(True)
    W_ref = head.classifier.weight.detach().clone().requires_grad_(True)
    b_ref = head.classifier.bias.detach().clone().requires_grad_(True)
    A_ref = A.detach().clone().requires_grad_(True)
    loss_ref, logits_ref = reference_csg_loss(A_ref, targets, G_ref, W_ref, b_ref, density, lam_reg)
    torch.testing.assert_close(out.gated_logits, logits_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, loss_ref, rtol=1e-12, atol=1e-12)
    out.loss.backward()
    loss_ref.backward()
    for mine, theirs in ((head.G.grad, G_ref.grad), (head.classifier.weight.grad, W_ref.grad),
                         (head.classifier.bias.grad, b_ref.grad), (A.grad, A_ref.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    # Only the rows of the labels present get the CE's gradient; with lam_reg the hinge adds its sign.
    assert (head.G.grad.abs().sum(dim=1) > 0).all()


def test_gradcheck_through_the_gate():
    # The head's CSG path with A and G as inputs (functional_call puts G in place of the parameter), through
    # the fused soft gate: its gradients against finite differences.
    head = random_head(lam_reg=0.1, density=0.1).train()
    targets = torch.tensor([0, 3, 3, 1])

    def gated_logits(A, G):
        return torch.func.functional_call(head, {"G": G}, (A, targets), {"csg": True}).gated_logits

    A = torch.randn(4, K, 2, 2, dtype=torch.float64, requires_grad=True)
    G = (torch.rand(C, K, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(gated_logits, (A, G))
    expected = head.classifier(A.mean(dim=(2, 3)) * G.index_select(0, targets))
    torch.testing.assert_close(gated_logits(A, G), expected)


def test_custom_classifier_gets_the_gated_map():
    torch.manual_seed(1)
    seen = {}

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(K, C).double()

        def forward(self, A):
            seen.setdefault("inputs", []).append(A.detach().clone())
            return self.linear(A.mean(dim=(2, 3)))

    head = CSGHead(K, C, classifier=Recorder()).double()
    head.G.data.copy_(torch.rand(C, K, dtype=torch.float64))
    A = torch.randn(3, K, 5, 5, dtype=torch.float64)
    targets = torch.tensor([4, 0, 2])
    head(A, targets, csg=True)
    plain, gated = seen["inputs"]
    torch.testing.assert_close(plain, A)
    torch.testing.assert_close(gated, A * head.G.detach()[targets][:, :, None, None])


def test_tokens_gate_the_last_dim():
    head = random_head(channel_dim=-1)
    tokens = torch.randn(2, 7, K, dtype=torch.float64)
    targets = torch.tensor([1, 2])
    out = head(tokens, targets, csg=True)
    expected = head.classifier(tokens.mean(dim=1) * head.G.detach()[targets])
    torch.testing.assert_close(out.gated_logits, expected)


def test_paths_by_mode():
    head = random_head()
    A = torch.randn(4, K, 2, 2, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3])
    head.train()
    assert head(A, targets).gated_logits is not None           # training with labels: the CSG path
    assert head(A, targets, csg=False).gated_logits is None    # forced off: the STD path
    std = head(A, targets, csg=False)
    torch.testing.assert_close(std.loss, F.cross_entropy(std.logits, targets))
    head.eval()
    out = head(A)                                              # inference: no label, the STD path
    assert out.gated_logits is None and out.loss is None
    torch.testing.assert_close(out.logits, head.classifier(A.mean(dim=(2, 3))))


def test_projection_equals_the_reference():
    torch.manual_seed(2)
    G = torch.randn(C, K, dtype=torch.float64)
    G[:, 0] = -torch.rand(C, dtype=torch.float64)  # a column closed for every class stays closed
    expected = reference_projection(G)
    head = CSGHead(K, C).double()
    head.G.data.copy_(G)
    head.project_()
    torch.testing.assert_close(head.G.data, expected)
    assert (head.G.data[:, 0] == 0).all()
    assert torch.allclose(head.G.data[:, 1:].max(dim=0).values, torch.ones(K - 1, dtype=torch.float64))
    torch.testing.assert_close(project_gates(G.clone()), expected)
    torch.testing.assert_close(head.density(), head.G.data.abs().mean())


def test_schedule_is_the_authors():
    # warm-up 2, period 3: STD epochs 1, 2; then every third epoch a CSG one.
    assert [epoch for epoch in range(1, 15) if is_csg_epoch(epoch, 2, 3)] == [5, 8, 11, 14]
    assert [epoch for epoch in range(1, 5) if is_csg_epoch(epoch, 0, 1)] == [1, 2, 3, 4]


def test_convert_builds_csg_networks():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = SmallConvNet(1, width=4, stages=2)
            self.classifier = nn.Linear(8, 10)

    model = convert(Classifier(), num_classes=3, num_filters=6, method="csg", density=0.3, init=1.0)
    assert isinstance(model, CSG) and model.head.G.shape == (3, 6)
    assert model.head.density_budget == 0.3 and (model.head.G == 1.0).all()
    out = model.train()(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    assert model.head.G.grad is not None and model.head.G.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="method must be one of"):
        convert(Classifier(), num_classes=3, method="nope")


# ---- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(init=1.5), "init must be in"), (dict(density=-0.1), "density must be in"),
    (dict(lam_reg=-1.0), "lam_reg must be"), (dict(channel_dim=2), "channel_dim must be"),
])
def test_bad_head_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CSGHead(K, C, **kwargs)


def test_bad_forward_input():
    head = CSGHead(K, C)
    A = torch.randn(2, K, 3, 3)
    with pytest.raises(ValueError, match="features must have the head's 12 filters"):
        head(torch.randn(2, K + 1, 3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"targets must be class labels in \[0, 5\)"):
        head(A, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"targets must have shape \(B,\)"):
        head(A, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="pass targets"):
        head(A, csg=True)


# ---- training ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_splits():
    splits = load_dataset("digits")
    return dataclasses.replace(splits, train=Subset(splits.train, range(256)), val=Subset(splits.val, range(80)),
                               test=Subset(splits.test, range(80)))


def test_training_alternates_and_projects(tmp_path, tiny_splits):
    config = TrainConfig(method="csg", epochs=4, batch_size=32, width=4, num_filters=8, csg_warmup=1,
                         csg_period=2, csg_lam_reg=0.05, gate_lr=0.05, out_dir=str(tmp_path), device="cpu",
                         quiet=True)
    run_dir = train(config, splits=tiny_splits)
    records = read_json_lines(os.path.join(run_dir, "metrics.jsonl"))
    densities = [record["density"] for record in records]
    # Epochs 1 and 2 are STD (warm-up, then off-period): G is untouched; epoch 3 is CSG: the hinge and the
    # projection move it.
    assert densities[0] == densities[1] == pytest.approx(0.5)
    assert densities[2] != pytest.approx(0.5)
    G = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["model"]["head.G"]
    assert G.min() >= 0 and G.max() <= 1
    open_columns = G.max(dim=0).values > 0
    torch.testing.assert_close(G.max(dim=0).values[open_columns], torch.ones(int(open_columns.sum())))
    summary = load_summary(run_dir)
    assert set(summary["test"]) == {"acc1", "acc_gate", "mis", "density"}
    assert summary["test"]["density"] == pytest.approx(float(G.abs().mean()), rel=1e-6)
    with open(os.path.join(run_dir, "config.json")) as handle:
        assert json.load(handle)["method"] == "csg"


def test_gate_learning_rate_and_no_decay_on_G(tmp_path, tiny_splits):
    from picnn_ext.train.methods import create_method

    config = TrainConfig(method="csg", gate_lr=0.25, lr=1e-3, weight_decay=1e-4, num_filters=8, width=4)
    method = create_method(config)
    model = method.build_model(1, 10, (8, 8))
    groups = method.parameter_groups(model)
    assert groups[1]["params"] == [model.head.G] and groups[1]["lr"] == 0.25 and groups[1]["weight_decay"] == 0
    assert sum(p.numel() for group in groups for p in group["params"]) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("field, value, match", [
    ("csg_period", 0, "csg_period must be at least 1"), ("csg_warmup", -1, "csg_warmup must be >= 0"),
    ("csg_density", 1.5, r"csg_density must be in \[0, 1\]"), ("gate_lr", 0.0, "gate_lr must be positive"),
])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(method="csg", **{field: value}).validate()
