"""NND's training recipe (the config's nnd_* options, picnn_ext.train.methods.nnd): each rule against a
small pure-PyTorch reference of it, and the bad values refused with the argument's name."""
import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from picnn_ext.data import load_dataset
from picnn_ext.nn.controller import ArchitectureController
from picnn_ext.train import TrainConfig, load_checkpoint, train
from picnn_ext.train.methods import create_method
from picnn_ext.train.methods.nnd import sparsity_weight

LAMBDA_S = 0.02
TAU = 0.6


def make_method(**overrides):
    values = dict(method="nnd", epochs=10, width=4, num_filters=8, lambda_s=LAMBDA_S, tau=TAU)
    values.update(overrides)
    config = TrainConfig(**values).validate()
    method = create_method(config)
    torch.manual_seed(0)
    model = method.build_model(1, 10, (8, 8))
    model.train()
    return method, model


def batch(n=16):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def reference_loss(model, images, targets, seed, lambda_s):
    """The NND objective written out term by term (DESIGN.md section 5), with the given sparsity weight."""
    out = model(images, generator=torch.Generator().manual_seed(seed))
    task = F.cross_entropy(out.logits, targets)
    sparsity = sum((gate.abs().sum(dim=1).mean() - TAU * gate.shape[1]).abs() for gate in out.gates)
    information = sum(F.cross_entropy(gate @ classifier.weight.T, targets)
                      for gate, classifier in zip(out.gates, model.criterion.info_classifiers))
    alignment = sum((F.softmax(a, 1) * (F.log_softmax(a, 1) - F.log_softmax(g, 1))).sum(1).mean()
                    for a, g in zip(out.pooled, out.gates))
    return task + lambda_s * sparsity + 0.01 * information + 1.0 * alignment


def controller_grads(model, loss):
    params = [p for c in model.modules() if isinstance(c, ArchitectureController) for p in c.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


@pytest.mark.parametrize("warmup, ramp", [(0, 0), (3, 0), (0, 4), (3, 4), (2, 1)])
def test_sparsity_weight_follows_the_schedule(warmup, ramp):
    for epoch in range(1, 12):
        # The rule as a piecewise-linear interpolation: 0 up to the warm-up's end, lambda_s after the ramp.
        expected = float(np.interp(epoch, [warmup, warmup + ramp], [0.0, LAMBDA_S])) if ramp else \
            (0.0 if epoch <= warmup else LAMBDA_S)
        assert sparsity_weight(epoch, LAMBDA_S, warmup, ramp) == pytest.approx(expected, abs=1e-15)
        method, _ = make_method(nnd_warmup=warmup, nnd_ramp=ramp, epochs=20)
        assert method.sparsity_weight(epoch) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("epoch, weight", [(1, 0.0), (3, 0.0), (4, LAMBDA_S / 2), (5, LAMBDA_S), (9, LAMBDA_S)])
def test_training_loss_weighs_the_sparsity_by_the_schedule(epoch, weight):
    method, model = make_method(nnd_warmup=3, nnd_ramp=2)
    images, targets = batch()
    loss = method.training_loss(model, images, targets, epoch=epoch, generator=torch.Generator().manual_seed(5))
    expected = reference_loss(model, images, targets, 5, weight)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(controller_grads(model, loss), controller_grads(model, expected))
    # The sparsity's own gradient to the controllers: zero in the warm-up, not after it.
    sparsity_grad = controller_grads(model, reference_loss(model, images, targets, 5, 1.0)) - \
        controller_grads(model, reference_loss(model, images, targets, 5, 0.0))
    from_loss = controller_grads(model, loss) - controller_grads(model, reference_loss(model, images, targets, 5, 0.0))
    assert sparsity_grad.abs().max() > 0
    torch.testing.assert_close(from_loss, weight * sparsity_grad, atol=1e-6, rtol=1e-4)


def test_without_a_recipe_the_loss_is_the_networks_own():
    method, model = make_method()
    images, targets = batch()
    loss = method.training_loss(model, images, targets, epoch=1, generator=torch.Generator().manual_seed(5))
    own = model(images, targets, generator=torch.Generator().manual_seed(5)).loss
    assert torch.equal(loss, own)
    torch.testing.assert_close(own, reference_loss(model, images, targets, 5, LAMBDA_S))


def test_finetune_epochs_use_the_inference_gates_and_leave_the_controllers_alone():
    method, model = make_method(nnd_finetune=2)
    images, targets = batch()
    losses = {}
    for epoch in (8, 9):  # 9 and 10 are the fine-tuning epochs of 10
        model.train()
        losses[epoch] = [method.training_loss(model, images, targets, epoch=epoch,
                                              generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
        assert all(c.training == (epoch == 8) for c in model.modules() if isinstance(c, ArchitectureController))
    # Random draws before, the deterministic z > 0 in the fine-tuning epochs: the seed no longer matters.
    assert not torch.equal(losses[8][0], losses[8][1])
    assert torch.equal(losses[9][0], losses[9][1])
    assert controller_grads(model, losses[9][0]).abs().max() == 0
    assert controller_grads(model, losses[8][0]).abs().max() > 0
    # The gates are the eval rule: z > 0 of each controller's input, recomputed here from the logits.
    out = model(images)
    for unit, gate in zip(model.gated_layers, out.gates):
        assert set(gate.unique().tolist()) <= {0.0, 1.0}
    first = model.gated_layers[0].controller
    torch.testing.assert_close(out.gates[0], (first.logits(images) > 0).float())


def test_controller_lr_is_a_parameter_group_of_its_own():
    method, model = make_method(nnd_controller_lr=3e-4)
    groups = method.parameter_groups(model)
    own = {id(p) for c in model.modules() if isinstance(c, ArchitectureController) for p in c.parameters()}
    assert {id(p) for p in groups[1]["params"]} == own and groups[1]["lr"] == 3e-4
    assert "lr" not in groups[0] and not own & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert len(make_method()[0].parameter_groups(model)) == 1


def test_a_run_with_finetune_keeps_the_controllers_of_the_last_sparsity_epoch(tmp_path):
    splits = load_dataset("digits")
    splits = dataclasses.replace(splits, train=Subset(splits.train, range(128)), val=Subset(splits.val, range(32)),
                                 test=Subset(splits.test, range(32)))
    config = TrainConfig(method="nnd", epochs=3, batch_size=32, width=4, num_filters=8, device="cpu", quiet=True,
                         out_dir=str(tmp_path), nnd_warmup=1, nnd_finetune=1, lambda_s=0.01, tau=0.5)
    run_dir = train(config, splits=splits, stop_after_epoch=2)
    before = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["model"]
    train(config, splits=splits, resume=True)
    after = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["model"]
    names = [name for name in after if ".controller." in name]
    assert names and all(torch.equal(before[name], after[name]) for name in names)
    assert not all(torch.equal(before[name], after[name]) for name in after if name.endswith("conv.weight"))


@pytest.mark.parametrize(
    "overrides, message",
    [({"nnd_warmup": -1}, "nnd_warmup must be an int >= 0"), ({"nnd_ramp": 1.5}, "nnd_ramp must be an int >= 0"),
     ({"nnd_finetune": -2}, "nnd_finetune must be an int >= 0"),
     ({"nnd_controller_lr": 0.0}, "nnd_controller_lr must be positive"),
     ({"nnd_warmup": 6, "nnd_finetune": 4}, r"nnd_warmup \(6\) \+ nnd_finetune \(4\) must be less than epochs")],
)
def test_bad_recipe_values_name_the_argument(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(method="nnd", epochs=10, **overrides).validate()


def test_cli_recipe_flags_reach_the_config_and_bad_ones_are_refused(tmp_path, capsys):
    from picnn_ext.cli import main

    assert main(["train", "--method", "nnd", "--epochs", "2", "--nnd-warmup", "2", "--out-dir",
                 str(tmp_path / "runs"), "--quiet"]) == 1
    assert "nnd_warmup (2) + nnd_finetune (0) must be less than epochs (2)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["train", "--method", "nnd", "--nnd-controller-lr", "-1", "--out-dir", str(tmp_path / "runs")]) == 1
    assert "nnd_controller_lr must be positive" in capsys.readouterr().err
