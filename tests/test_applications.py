"""Tests of picnn_ext.applications (localisation, Grad-CAM, attacks, detection) and of ``picnn-ext localize``
and ``picnn-ext detect``: known answers on hand-made maps and models, then the commands on tiny runs."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from picnn_ext.applications import (RawPixelNet, activation_maps, auroc, class_filter_weights, detect,
                                    detection_reference, fgsm, filter_agreement, gaussian_blur, grad_cam, iou,
                                    keep_top, localise, path_distance, pgd, top_filters)
from picnn_ext.cli import main as cli_main
from picnn_ext.data import load_dataset
from picnn_ext.report.comparison import combine_extra_metrics
from picnn_ext.train import TrainConfig, train
from picnn_ext.train.methods import create_method

# --------------------------------------------------------------------------------------------------------
# Maps and IoU


def test_a_map_equal_to_the_mask_has_iou_1_and_a_disjoint_one_0():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 1:6] = True
    masks[1, 0:3, 0:3] = True
    assert iou(masks.clone(), masks).tolist() == [1.0, 1.0]
    disjoint = torch.zeros_like(masks)
    disjoint[0, 6:, :] = True
    disjoint[1, 4:, 4:] = True
    assert iou(disjoint, masks).tolist() == [0.0, 0.0]
    # Half the mask and nothing else: 1/2.
    half = torch.zeros_like(masks)
    half[0, 2:5, 1:3], half[0, 2:5, 3:6] = False, True
    assert iou(half[:1], masks[:1]).item() == pytest.approx(9 / 15)


def test_keeping_the_top_share_of_a_map_that_peaks_on_the_mask_recovers_it():
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, :3, :] = True    # 30 of 100 pixels
    masks[1, 4:7, :] = True
    masks[2, :, 7:] = True
    maps = torch.rand(3, 10, 10, generator=generator) + 2.0 * masks
    assert iou(keep_top(maps, 0.3), masks).tolist() == [1.0, 1.0, 1.0]
    # A constant map points nowhere: nothing is kept, IoU 0.
    assert not keep_top(torch.ones(1, 10, 10), 0.3).any()
    # ReLU zeros are never picked to fill the share: only the 5 positive pixels are kept.
    sparse = torch.zeros(1, 10, 10)
    sparse[0, 0, :5] = 1.0
    assert keep_top(sparse, 0.3).sum() == 5
    with pytest.raises(ValueError, match="fraction"):
        keep_top(maps, 0.0)


def test_activation_map_averages_the_weighted_filters():
    A = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).view(2, 3, 2, 2)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    maps = activation_maps(A, weights)
    torch.testing.assert_close(maps[0], A[0, 0])
    torch.testing.assert_close(maps[1], (A[1, 1] + A[1, 2]) / 2)


def test_gaussian_blur_keeps_the_mass_and_spreads_a_point():
    point = torch.zeros(1, 21, 21, dtype=torch.float64)
    point[0, 10, 10] = 1.0
    blurred = gaussian_blur(point, 2.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert blurred[0, 10, 10] < 0.1 and blurred[0].argmax().item() == 10 * 21 + 10
    # Separable Gaussian: the profile through the centre falls off as exp(-d^2 / (2 sigma^2)).
    ratio = (blurred[0, 10, 12] / blurred[0, 10, 10]).item()
    assert ratio == pytest.approx(np.exp(-4 / 8), rel=1e-3)


# --------------------------------------------------------------------------------------------------------
# Grad-CAM


def test_grad_cam_of_a_model_reading_a_known_region_peaks_there():
    # Two filters: filter 0 is bright on rows 0-3, filter 1 (brighter) on rows 8-11. The logit of class 0
    # is the mean of filter 0 over the rows 0-3 and the logit of class 1 that of filter 1 over rows 8-11:
    # Grad-CAM must weight the filter that the class reads, not the strongest one.
    A = torch.zeros(1, 2, 12, 12, dtype=torch.float64)
    A[0, 0, 0:4] = 1.0
    A[0, 1, 8:12] = 3.0
    A = A + 0.01 * torch.rand(A.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def logits_from_features(features):
        return torch.stack([features[:, 0, 0:4].mean(dim=(1, 2)), features[:, 1, 8:12].mean(dim=(1, 2))], dim=1)

    for label, rows in ((0, range(0, 4)), (1, range(8, 12))):
        cam = grad_cam(A, logits_from_features, torch.tensor([label]))[0]
        peak_row = int(cam.argmax()) // 12
        assert peak_row in rows
        outside = [row for row in range(12) if row not in rows]
        assert cam[list(rows)].min() > cam[outside].max()


def test_grad_cam_of_a_gap_linear_head_is_the_classifier_weighted_map():
    generator = torch.Generator().manual_seed(1)
    A = torch.rand(3, 4, 5, 5, generator=generator, dtype=torch.float64)
    linear = nn.Linear(4, 2).double()
    classes = torch.tensor([0, 1, 1])
    cam = grad_cam(A, lambda features: linear(features.mean(dim=(2, 3))), classes)
    expected = torch.relu(torch.einsum("bkhw,bk->bhw", A, linear.weight[classes].detach()) / 25)
    torch.testing.assert_close(cam, expected)


# --------------------------------------------------------------------------------------------------------
# Attacks


def _linear_model(generator):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return model


def test_fgsm_raises_the_loss_of_every_example():
    generator = torch.Generator().manual_seed(2)
    model = _linear_model(generator)
    raw = torch.rand(32, 1, 4, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (32,), generator=generator)
    before = F.cross_entropy(model(raw), targets, reduction="none")
    attacked = fgsm(model, raw, targets, 8 / 255)
    after = F.cross_entropy(model(attacked), targets, reduction="none")
    assert (after > before).all()
    assert (attacked - raw).abs().max().item() == pytest.approx(8 / 255)
    # The step is the sign of the gradient: reversing it would lower the loss.
    assert (F.cross_entropy(model(2 * raw - attacked), targets, reduction="none") < before).all()
    torch.testing.assert_close(fgsm(model, raw, targets, 0.0), raw)


def test_pgd_stays_in_the_ball_and_the_pixel_range_and_raises_the_loss():
    generator = torch.Generator().manual_seed(3)
    model = _linear_model(generator)
    raw = torch.rand(32, 1, 4, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (32,), generator=generator)
    epsilon = 0.1
    attacked = pgd(model, raw, targets, epsilon, steps=5, clamp=lambda x: x.clamp(0.0, 1.0),
                   generator=torch.Generator().manual_seed(0))
    assert (attacked - raw).abs().max() <= epsilon + 1e-12
    assert attacked.min() >= 0.0 and attacked.max() <= 1.0
    before = F.cross_entropy(model(raw), targets, reduction="none")
    after = F.cross_entropy(model(attacked), targets, reduction="none")
    assert (after > before).all()
    again = pgd(model, raw, targets, epsilon, steps=5, clamp=lambda x: x.clamp(0.0, 1.0),
                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(attacked, again)


@pytest.mark.parametrize("bad, match", [(dict(epsilon=-0.01), "epsilon"), (dict(epsilon=float("nan")), "epsilon"),
                                        (dict(steps=0), "steps"), (dict(step_size=-1.0), "step_size")])
def test_attack_options_are_checked(bad, match):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    options = dict(epsilon=0.1, steps=2, step_size=None, **{})
    options.update(bad)
    with pytest.raises(ValueError, match=match):
        pgd(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), options["epsilon"], steps=options["steps"],
            step_size=options["step_size"])


# --------------------------------------------------------------------------------------------------------
# Detection scores


def test_a_score_that_ignores_the_input_gives_auroc_one_half():
    assert auroc(np.full(50, 0.3), np.full(20, 0.3)) == 0.5
    assert np.isnan(auroc(np.ones(3), np.array([])))  # nothing to detect: undefined, not 0.5
    assert auroc(np.array([0.1, 0.2]), np.array([0.5, 0.9])) == 1.0
    assert auroc(np.array([0.5, 0.9]), np.array([0.1, 0.2])) == 0.0


def test_filter_agreement_is_the_activation_share_inside_the_predicted_class():
    A = torch.zeros(3, 4, 2, 2)
    A[0, 0], A[0, 1] = 1.0, 3.0          # pooled a = (1, 3, 0, 0)
    A[1, 2] = 2.0                         # a = (0, 0, 2, 0)
    weights = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 1.0, 0.0]])
    share = filter_agreement(A, torch.tensor([0, 1, 1]), weights)
    torch.testing.assert_close(share, torch.tensor([0.25, 1.0, 0.0]))  # the last image: nothing active


def test_path_distance_is_the_mean_absolute_difference_to_the_class_path():
    paths = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    class_paths = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(path_distance(paths, torch.tensor([0, 1]), class_paths), torch.tensor([0.125, 0.25]))


def test_top_filters_pick_each_class_largest_means():
    means = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.8, 0.1, 0.2, 0.7]])
    assert top_filters(means, 2).tolist() == [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="count"):
        top_filters(means, 5)


def test_extra_metrics_compose_and_refuse_a_clash():
    combined = combine_extra_metrics([lambda run: {"a": 1.0}, lambda run: {"b": 2.0}])
    assert combined("run") == {"a": 1.0, "b": 2.0}
    single = lambda run: {"c": 3.0}  # noqa: E731
    assert combine_extra_metrics(single) is single
    with pytest.raises(ValueError, match="a"):
        combine_extra_metrics([lambda run: {"a": 1.0}, lambda run: {"a": 2.0}])("run")


# --------------------------------------------------------------------------------------------------------
# The data sets' normalisation


def test_raw_pixels_of_the_digits_are_in_the_unit_interval():
    splits = load_dataset("digits")
    images = torch.stack([splits.test[i][0] for i in range(64)])
    raw = splits.to_raw(images)
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6 and raw.max() > 0.9
    torch.testing.assert_close(splits.from_raw(raw), images)
    assert splits.pixel_range == (0.0, 1.0)


# --------------------------------------------------------------------------------------------------------
# On trained runs


def _tiny(splits, train=160, val=40, test=48):
    return dataclasses.replace(splits, train=Subset(splits.train, range(train)), val=Subset(splits.val, range(val)),
                               test=Subset(splits.test, range(test)),
                               test_object_masks=None if splits.test_object_masks is None
                               else splits.test_object_masks[:test])


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory):
    splits = _tiny(load_dataset("shapes"))
    out_dir = str(tmp_path_factory.mktemp("runs"))
    runs = {}
    for method in ("std", "picnn", "csg"):
        config = TrainConfig(method=method, dataset="shapes", epochs=1, batch_size=32, width=4, num_filters=16,
                             csg_warmup=0, csg_period=1, device="cpu", quiet=True, out_dir=out_dir)
        runs[method] = train(config, splits=splits)
    return runs, splits


def _net(run_dir, splits):
    from picnn_ext.train import load_config, load_trained_model

    model, splits = load_trained_model(run_dir, splits)
    return RawPixelNet(create_method(load_config(run_dir)), model, splits)


def test_class_filters_follow_each_method(shapes_runs):
    runs, splits = shapes_runs
    nets = {method: _net(run_dir, splits) for method, run_dir in runs.items()}
    picnn = class_filter_weights(nets["picnn"])
    P = nets["picnn"].model.head.P
    assert picnn.weights.sum(dim=0).tolist() == [1.0] * 16  # every filter to exactly one class
    assert (picnn.weights.argmax(dim=0) == P.argmax(dim=0)).all()
    torch.testing.assert_close(class_filter_weights(nets["csg"]).weights, nets["csg"].model.head.G.detach())
    std = class_filter_weights(nets["std"])
    assert std.weights.sum(dim=1).tolist() == [2.0] * 8 and "class-mean" in std.rule  # K // C = 2 per class


def test_raw_pixel_net_is_the_model_behind_the_normalisation(shapes_runs):
    runs, splits = shapes_runs
    net = _net(runs["picnn"], splits)
    images = torch.stack([splits.test[i][0] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(net.logits(splits.to_raw(images)), net.model(images).logits)


def test_localisation_and_detection_on_a_run(shapes_runs):
    runs, splits = shapes_runs
    net = _net(runs["csg"], splits)
    filters = class_filter_weights(net)
    result = localise(net, filters, splits.test, splits.test_object_masks, num_examples=3, batch_size=20)
    assert set(result.ious) == {"activation", "gradient", "gradcam"}
    for values in result.ious.values():
        assert values.shape == (48,) and ((values >= 0) & (values <= 1)).all()
    assert result.examples["gradient"].shape == (3, 32, 32)
    reference = detection_reference(net, filters)
    assert reference.kind == "filter agreement"
    found = detect(net, reference, splits.test, epsilon=8 / 255, steps=3, batch_size=20)
    assert set(found.attacks) == {"fgsm", "pgd"}
    assert 0.0 <= found.clean_accuracy <= 1.0
    zero = detect(net, reference, splits.test, epsilon=0.0, steps=1, batch_size=20)
    assert zero.attacks["fgsm"].changed_share == 0.0 and np.isnan(zero.attacks["fgsm"].auroc)


def _copy_run(run_dir, tmp_path):
    target = tmp_path / os.path.basename(run_dir)
    shutil.copytree(run_dir, target)
    return target


def test_localize_and_detect_commands_write_their_files(shapes_runs, tmp_path, capsys):
    runs, _ = shapes_runs
    run = _copy_run(runs["picnn"], tmp_path)
    assert cli_main(["localize", str(run), "--max-images", "24", "--num-examples", "3"]) == 0
    record = json.loads((run / "localisation.json").read_text())
    assert record["images"] == 24 and record["maps"]["gradient"]["hit_threshold"] == 0.2
    assert (run / "localisation.png").read_bytes().startswith(b"\x89PNG")
    assert cli_main(["detect", str(run), "--max-images", "24", "--epsilon", "8/255", "--pgd-steps", "2"]) == 0
    record = json.loads((run / "detection.json").read_text())
    assert record["epsilon"] == pytest.approx(8 / 255) and set(record["attacks"]) == {"fgsm", "pgd"}
    assert record["pixel_range"] is None  # shapes' raw pixels carry Gaussian noise: no box
    assert (run / "detection.png").read_bytes().startswith(b"\x89PNG")


def test_bad_input_gives_clear_errors_and_writes_nothing(shapes_runs, tmp_path, capsys):
    runs, _ = shapes_runs
    run = _copy_run(runs["std"], tmp_path)
    before = sorted(os.listdir(run))
    assert cli_main(["detect", str(run), "--epsilon", "-0.1"]) == 1
    assert "epsilon must be a finite number >= 0" in capsys.readouterr().err
    assert sorted(os.listdir(run)) == before
    os.remove(run / "best.pt")
    before = sorted(os.listdir(run))
    for command in ("localize", "detect"):
        assert cli_main([command, str(run), "--max-images", "4"]) == 2
        err = capsys.readouterr().err
        assert "best.pt: the file is missing" in err and "Traceback" not in err
    assert sorted(os.listdir(run)) == before
    assert cli_main(["localize", str(tmp_path / "nowhere")]) == 1
    assert "no run directory" in capsys.readouterr().err


def test_localize_refuses_a_data_set_without_masks(tmp_path, capsys):
    splits = _tiny(load_dataset("digits"), train=64, val=20, test=20)
    config = TrainConfig(method="picnn", dataset="digits", epochs=1, batch_size=32, width=4, num_filters=10,
                         device="cpu", quiet=True, out_dir=str(tmp_path))
    run = train(config, splits=splits)
    before = sorted(os.listdir(run))
    assert cli_main(["localize", run]) == 1
    err = capsys.readouterr().err
    assert "object masks" in err and "'digits'" in err
    assert sorted(os.listdir(run)) == before
