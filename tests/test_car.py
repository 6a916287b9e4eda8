"""CAR (DESIGN.md section 6): filter importance by every fast path against brute-force removal of one filter
at a time in plain PyTorch, the errors of bad input and the `picnn-ext car` command. Float64 throughout, so
that "equal" means equal counts."""
import copy

import pytest
import torch
from torch import nn

from picnn_ext.car import assignment_agreement, filter_importance, prune, remove_filters
from picnn_ext.models import SmallConvNet
from picnn_ext.nn import PICNN

from car_helpers import (C, K, check_against_reference, make_data, make_picnn, one_thread,  # noqa: F401  (autouse)
                         reference_accuracies, trained, zeroed_logits)

# --------------------------------------------------------------------------------------------------------
# filter_importance


def test_closed_form_equals_brute_force_removal():
    model = make_picnn()
    data = make_data()
    result = filter_importance(model, data)
    assert result.layer == "interpreted" and result.car.shape == (K,) and result.class_car.shape == (K, C)
    check_against_reference(result, reference_accuracies(model, data, model.interpreted, K))


def test_csg_model_closed_form_and_pruning():
    from picnn_ext.nn import CSG

    torch.manual_seed(0)
    backbone = SmallConvNet(1, width=4, stages=2)
    model = trained(CSG(backbone, backbone.out_channels, C, num_filters=K))
    with torch.no_grad():
        model.head.G.uniform_(0.0, 1.0)
    data = make_data()
    result = filter_importance(model, data)
    check_against_reference(result, reference_accuracies(model, data, model.interpreted, K))
    images = torch.cat([batch[0] for batch in data])
    smaller = remove_filters(model, [0, 3], images[:8])
    assert smaller.head.G.shape == (C, K - 2) and torch.equal(smaller.head.G, model.head.G[:, [1, 2, 4, 5]])
    assert smaller.num_filters == smaller.head.num_filters == K - 2
    with torch.no_grad():
        got = smaller(images).logits
    torch.testing.assert_close(got, zeroed_logits(model, images, model.head.classifier, [0, 3], K), rtol=0, atol=1e-12)
    assert 0.0 <= assignment_agreement(result.class_car, model.head.G) <= 1.0


def test_other_head_gates_the_features_and_equals_brute_force():
    # No closed form: the head runs on gated copies of A.
    model = make_picnn(max_pool_head=True)
    data = make_data()
    reference = reference_accuracies(model, data, model.interpreted, K)
    for max_batch in (1, 40, 10_000):  # one candidate per pass, chunks that do not divide K, all at once
        check_against_reference(filter_importance(model, data, max_batch=max_batch), reference)


@pytest.mark.parametrize("layer, reader", [("backbone.1.0", "backbone.3.0"), ("backbone.4.0", "interpreted.0")])
def test_inner_layer_equals_brute_force_removal(layer, reader):
    # Removing a conv's filter: its reader (after BN, ReLU and max pooling) sees a zero in that channel.
    model = make_picnn()
    data = make_data()
    modules = dict(model.named_modules())
    channels = modules[layer].out_channels
    reference = reference_accuracies(model, data, modules[reader], channels, pre=True)
    for max_batch in (16, 50, 4096):
        result = filter_importance(model, data, layer, max_batch=max_batch)
        assert result.layer == layer and result.num_filters == channels
        check_against_reference(result, reference)
    # A first batch of one image (the check of how to batch the candidates waits for a larger one).
    images, labels = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    rebatched = [(images[:1], labels[:1]), (images[1:40], labels[1:40]), (images[40:], labels[40:])]
    check_against_reference(filter_importance(model, rebatched, layer), reference)


def test_inner_layer_under_a_residual_connection_equals_brute_force():
    # After the named conv, the sum reads y, computed before it: the candidates cannot share one pass of
    # the network before the layer, and the whole batch is repeated instead.
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.relu = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
            self.conv, self.bn, self.fc = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, C)

        def forward(self, x):
            y = self.relu(self.stem(x))
            return self.fc(self.relu(self.bn(self.conv(y)) + y).mean((2, 3)))

    torch.manual_seed(0)
    model = trained(Residual())
    data = make_data()
    reference = reference_accuracies(model, data, model.bn, 4)
    check_against_reference(filter_importance(model, data, "conv"), reference)


def test_naming_the_interpreted_conv_gives_the_closed_form_result():
    model = make_picnn()
    data = make_data()
    closed, hooked = filter_importance(model, data), filter_importance(model, data, "interpreted.0")
    assert torch.equal(closed.car, hooked.car) and torch.equal(closed.class_car, hooked.class_car)


def test_tokens_model_equals_brute_force():
    class Tokens(nn.Module):  # images -> (B, 16, 8) tokens
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(1, 8, 2, stride=2)

        def forward(self, images):
            return self.embed(images).flatten(2).transpose(1, 2)

    torch.manual_seed(0)
    model = trained(PICNN(Tokens(), 8, C, num_filters=K, tokens=True).double())
    data = make_data()
    result = filter_importance(model, data)
    check_against_reference(result, reference_accuracies(model, data, model.interpreted, K, channel_dim=-1))


def test_plain_classifier_with_a_named_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 6, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, C)).double()
    model = trained(model)
    data = make_data()
    reference = reference_accuracies(model, data, model[3], 5, pre=True)
    check_against_reference(filter_importance(model, data, "0"), reference)
    # Pruning it: the smaller network computes what the original does with the same filters zeroed.
    smaller = remove_filters(model, [1, 3], data[0][0], layer="0")
    assert smaller[0].out_channels == 3 and smaller[1].num_features == 3 and smaller[3].in_channels == 3
    with pytest.raises(ValueError, match="layer=None"):
        filter_importance(model, data)


def test_class_without_images_has_nan_and_never_wins():
    model = make_picnn()
    data = [(images, labels) for images, labels in make_data()]
    data = [(images[labels != 2], labels[labels != 2]) for images, labels in data]
    result = filter_importance(model, data)
    assert result.class_counts[2] == 0 and result.class_car[:, 2].isnan().all()
    assert (result.most_important_class() != 2).all() and (result.most_important_class() >= 0).any()
    assert result.to_dict()["class_car"][0][2] is None


def test_model_mode_and_weights_are_left_alone():
    model = make_picnn().train()
    state = copy.deepcopy(model.state_dict())
    filter_importance(model, make_data(), "backbone.1.0")
    model.train()
    filter_importance(model, make_data())
    assert model.training
    smaller, _ = prune(model, make_data(), "backbone.1.0", keep=3)
    assert model.training and smaller.training
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())


# --------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_names_the_argument():
    model = make_picnn()
    data = make_data()
    with pytest.raises(ValueError, match="layer must be the name of a module.*backbone.0.0"):
        filter_importance(model, data, "backbone.9")
    with pytest.raises(ValueError, match="layer must be the name"):
        prune(model, data, "nope", keep=2)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\).*label 4"):
        filter_importance(model, [(data[0][0], torch.full((16,), C))])
    with pytest.raises(ValueError, match="label -1"):
        filter_importance(model, [(data[0][0], torch.full((16,), -1))], "backbone.1.0")
    with pytest.raises(ValueError, match="labels.*integer"):
        filter_importance(model, [(data[0][0], torch.zeros(16))])
    for empty in ([], [(torch.zeros(0, 1, 8, 8, dtype=torch.float64), torch.zeros(0, dtype=torch.long))]):
        with pytest.raises(ValueError, match="data holds no samples"):
            filter_importance(model, empty)
        with pytest.raises(ValueError, match="data holds no samples"):
            prune(model, empty, keep=1)
    with pytest.raises(ValueError, match=f"keep must be at most K = {K}"):
        prune(model, data, keep=K + 1)
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        prune(model, data, keep=0)
    with pytest.raises(ValueError, match="keep .* or min_accuracy"):
        prune(model, data)
    with pytest.raises(ValueError, match="min_accuracy must be a fraction"):
        prune(model, data, min_accuracy=1.5)
    with pytest.raises(ValueError, match="per_round"):
        prune(model, data, keep=2, per_round=0)
    with pytest.raises(TypeError, match="data must be re-iterable"):
        prune(model, iter(data), keep=2)
    with pytest.raises(ValueError, match="filters must be filter indices in \\[0, 6\\)"):
        remove_filters(model, [6], data[0][0])
    with pytest.raises(ValueError, match="keep at least one"):
        remove_filters(model, range(K), data[0][0])


def test_channel_count_mismatch_names_the_layer():
    model = make_picnn()
    data = make_data()
    broken = copy.deepcopy(model)
    broken.head.classifier = nn.Linear(K + 1, C).double()
    with pytest.raises(ValueError, match=r"layer: the interpreted layer gives 6 filters.*in_features=7"):
        filter_importance(broken, data)
    # A Linear that reads a flattened map: K * H * W inputs, not K channels.
    flat = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 64, C)).double()
    with pytest.raises(ValueError, match="layer '0'.*reads 192 input channels"):
        prune(flat, data, "0", keep=1)


def test_a_layer_that_is_not_a_chain_is_refused():
    class Skip(nn.Module):  # the conv's output is read by the next conv and by a channel mean
        def __init__(self):
            super().__init__()
            self.conv1, self.relu, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, C)

        def forward(self, x):
            y = self.relu(self.conv1(x))
            z = self.conv2(y) + y.mean(1, keepdim=True)
            return self.fc(z.mean((2, 3)))

    model = Skip().double().eval()
    data = make_data()
    with pytest.raises(ValueError, match="layer 'conv1'.*cannot be pruned structurally"):
        remove_filters(model, [0], data[0][0], layer="conv1")
    with pytest.raises(ValueError, match="layer 'conv2'.*cannot be pruned structurally"):
        remove_filters(model, [0], data[0][0], layer="conv2")
    with pytest.raises(ValueError, match="layer 'relu'.*conv or Linear"):
        remove_filters(model, [0], data[0][0], layer="relu")


# --------------------------------------------------------------------------------------------------------
# picnn-ext car


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, one_thread):
    import dataclasses

    from torch.utils.data import Subset

    from picnn_ext.data import load_dataset
    from picnn_ext.train import TrainConfig, train

    splits = load_dataset("digits")
    splits = dataclasses.replace(splits, train=Subset(splits.train, range(256)),
                                 val=Subset(splits.val, range(120)), test=Subset(splits.test, range(150)))
    config = TrainConfig(epochs=2, batch_size=32, width=4, num_filters=8, device="cpu", quiet=True,
                         out_dir=str(tmp_path_factory.mktemp("runs")))
    return train(config, splits=splits), splits


def test_car_command_writes_json_and_figures(finished_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import json

    from torch.utils.data import DataLoader

    from picnn_ext.cli import main
    from picnn_ext.report.car_report import write_car_report
    from picnn_ext.train import load_trained_model

    run_dir, splits = finished_run
    path = write_car_report(run_dir, str(tmp_path / "car"), keep=5, splits=splits)
    assert path == str(tmp_path / "car" / "car.json")
    result = json.loads((tmp_path / "car" / "car.json").read_text(encoding="utf-8"))
    for name in ("car_curve.png", "class_car.png"):
        assert (tmp_path / "car" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, _ = load_trained_model(run_dir, splits)
    val = filter_importance(model, DataLoader(splits.val, batch_size=50))
    assert result["val"]["car"] == val.car.tolist() and result["val"]["num_samples"] == 120
    assert result["test"]["num_samples"] == 150 and len(result["test"]["class_car"]) == 8
    assert [step["num_filters"] for step in result["curve"]] == [8, 7, 6, 5]
    assert result["curve"][0]["accuracy"] == val.accuracy
    assert len(result["pruned"]["kept"]) == 5 and result["pruned"]["parameters"] < result["pruned"]["parameters_before"]
    assert 0.0 <= result["agreement_test"]["P"] <= 1.0

    # Through the command, on an inner layer, down to the accuracy floor; and bad input writes nothing.
    out = tmp_path / "inner"
    assert main(["car", run_dir, "--layer", "backbone.1.0", "--min-accuracy", "0.0", "--out", str(out)]) == 0
    inner = json.loads((out / "car.json").read_text(encoding="utf-8"))
    assert inner["layer"] == "backbone.1.0" and inner["curve"][-1]["num_filters"] == 1
    capsys.readouterr()
    for args, message in ((["--layer", "backbone.9"], "layer must be the name of a module"),
                          (["--keep", "9"], "keep must be at most K = 8")):
        assert main(["car", run_dir, "--out", str(tmp_path / "bad"), *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("picnn-ext car: error:") and message in err and "Traceback" not in err
        assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        main(["car", run_dir, "--keep", "2", "--min-accuracy", "0.5"])
