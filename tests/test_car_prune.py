"""CAR pruning (DESIGN.md section 6): the structurally pruned network against the same network with the filters
zeroed, and the greedy order against a small reference loop. Float64 throughout."""
import copy

import pytest
import torch

from picnn_ext.car import assignment_agreement, prune, remove_filters

from car_helpers import (C, K, N, make_data, make_picnn, one_thread,  # noqa: F401  (an autouse fixture)
                         reference_accuracies, zeroed_logits)

# --------------------------------------------------------------------------------------------------------
# Structural pruning


def test_pruned_interpreted_layer_computes_the_zeroed_network():
    model = make_picnn()
    before = copy.deepcopy(model.state_dict())
    images = torch.cat([batch[0] for batch in make_data()])
    smaller = remove_filters(model, [4, 1], images[:8])
    assert smaller.interpreted[0].out_channels == K - 2 and smaller.interpreted[0].weight.shape[0] == K - 2
    assert smaller.head.classifier.in_features == K - 2 and smaller.head.classifier.weight.shape == (C, K - 2)
    assert smaller.head.theta.shape == (C, K - 2) and smaller.head.P.shape == (C, K - 2)
    assert smaller.num_filters == smaller.head.num_filters == K - 2
    keep = [0, 2, 3, 5]
    assert torch.equal(smaller.head.theta, model.head.theta[:, keep])
    with torch.no_grad():
        got = smaller(images).logits
    torch.testing.assert_close(got, zeroed_logits(model, images, model.head.classifier, [1, 4], K), rtol=0, atol=1e-12)
    # The smaller PICNN still trains: all three pathways run with K - 2 filters.
    out = smaller.train()(images[:16], torch.zeros(16, dtype=torch.long))
    assert out.mask.shape == (16, K - 2) and torch.isfinite(out.loss)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())


@pytest.mark.parametrize("layer, reader, filters", [("backbone.1.0", "backbone.3.0", [0, 3]),
                                                    ("backbone.4.0", "interpreted.0", [2, 5, 6])])
def test_pruned_inner_layer_computes_the_zeroed_network(layer, reader, filters):
    model = make_picnn()
    images = torch.cat([batch[0] for batch in make_data()])
    modules = dict(model.named_modules())
    channels = modules[layer].out_channels
    smaller = remove_filters(model, filters, images[:8], layer=layer)
    small_modules = dict(smaller.named_modules())
    left = channels - len(filters)
    bn = layer[:-1] + "1"
    assert small_modules[layer].out_channels == left and small_modules[bn].num_features == left
    assert small_modules[bn].running_mean.shape == (left,) and small_modules[reader].in_channels == left
    with torch.no_grad():
        got = smaller(images).logits
    torch.testing.assert_close(got, zeroed_logits(model, images, modules[reader], filters, channels), rtol=0, atol=1e-12)
    if reader == "interpreted.0":
        assert smaller.in_channels == smaller.backbone.out_channels == left


@torch.no_grad()
def reference_greedy(model, data, module, channels, keep, per_round=1, pre=False):
    """The authors' loop: remove the filter(s) of lowest CAR (ties: lowest index), recompute, repeat,
    with filters removed by a mask on the unpruned network."""
    mask = torch.ones(channels, dtype=torch.float64)
    order, accuracies = [], []
    while True:
        base, removed, count = reference_accuracies(model, data, module, channels, mask=mask, pre=pre)
        accuracies.append(float(base.sum() / count.sum()))
        alive = mask.nonzero().flatten().tolist()
        if len(alive) <= keep:
            return order, accuracies
        car = {i: float(base.sum() / count.sum() - removed[i].sum() / count.sum()) for i in alive}
        step = sorted(sorted(alive, key=lambda i: car[i])[:min(per_round, len(alive) - keep)])
        order.append(step)
        mask[step] = 0


@pytest.mark.parametrize("layer, per_round", [(None, 1), (None, 2), ("backbone.1.0", 1)])
def test_greedy_order_matches_the_reference_loop(layer, per_round):
    model = make_picnn(seed=3)
    data = make_data(seed=4)
    if layer is None:
        module, channels, pre = model.interpreted, K, False
    else:
        module, channels, pre = dict(model.named_modules())["backbone.3.0"], 4, True
    keep = 1
    order, accuracies = reference_greedy(model, data, module, channels, keep, per_round, pre)
    smaller, curve = prune(model, data, layer, keep=keep, per_round=per_round)
    assert [step.removed for step in curve[1:]] == order
    assert [step.num_filters for step in curve] == [channels - sum(len(s) for s in order[:i]) for i in range(len(order) + 1)]
    assert [step.accuracy for step in curve] == pytest.approx(accuracies, abs=1e-12)
    assert len(set(accuracies)) > 1  # the filters matter: not a vacuous order


def test_min_accuracy_stops_before_falling_below():
    model = make_picnn(seed=3)
    data = make_data(seed=4)
    _, full = prune(model, data, keep=1)
    # The threshold just under the lowest accuracy before the curve first falls below all earlier points.
    lowest = [min(step.accuracy for step in full[:j + 1]) for j in range(len(full))]
    fall = next(j for j in range(1, len(full)) if full[j].accuracy < lowest[j - 1])
    threshold = lowest[fall - 1] - 1e-9
    assert fall >= 2  # some removals are accepted before the stop: not a vacuous test
    smaller, curve = prune(model, data, min_accuracy=threshold)
    assert [step.removed for step in curve] == [step.removed for step in full[:len(curve)]]
    assert all(step.accuracy >= threshold for step in curve)
    assert full[len(curve)].accuracy < threshold
    assert smaller.num_filters == curve[-1].num_filters


def test_eval_data_accuracy_and_the_model_left_alone():
    model = make_picnn(seed=3)
    data, test = make_data(seed=4), make_data(seed=5)
    before = copy.deepcopy(model.state_dict())
    smaller, curve = prune(model, data, keep=3, eval_data=test)
    correct = sum(int((smaller(images).logits.argmax(1) == labels).sum()) for images, labels in test)
    assert curve[-1].eval_accuracy == correct / N and curve[-1].num_filters == 3 == smaller.num_filters
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())


def test_assignment_agreement():
    class_car = torch.tensor([[0.1, 0.3, 0.0], [0.5, 0.2, 0.1], [0.0, 0.0, 0.4], [0.2, 0.1, float("nan")],
                              [0.0, -0.1, 0.0]])
    P = torch.tensor([[0.1, 0.7, 0.2, 0.3, 0.8], [0.8, 0.2, 0.1, 0.3, 0.1], [0.1, 0.1, 0.7, 0.4, 0.1]])  # (C, K)
    # Most important: 1, 0, 2, 0, none (no class loses accuracy); assigned by P: 1, 0, 2, 2, 0.
    assert assignment_agreement(class_car, P) == 0.6
    assert assignment_agreement(class_car.numpy(), torch.tensor([1, 0, 0, 0, 0])) == 0.6
    with pytest.raises(ValueError, match="assignment"):
        assignment_agreement(class_car, P.t())


