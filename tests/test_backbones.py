"""convert() and the model registry on torchvision's and timm's own models (random weights, small images),
and `picnn-ext train --model` on them.

These need torchvision (and timm), which import with the CUDA build of torch (2.14.1) but not with the CPU
build of the plain .venv: there they are skipped with the reason. CI runs them in its torch 2.14.1
environment with PICNN_EXT_REQUIRE_TORCHVISION=1 and PICNN_EXT_REQUIRE_TIMM=1, which turn a skip into a
failure, so that they cannot pass there by not running.
"""
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from picnn_ext._safe_load import UnsafeFileError
from picnn_ext.cli import main
from picnn_ext.data.transforms import colour_jitter
from picnn_ext.models import convert, create_model
from picnn_ext.nn import PICNN
from picnn_ext.train import load_config, load_summary


def require(library):
    """The module, or skip (fail where the environment variable says it must import)."""
    try:
        if library == "torchvision":
            import torchvision.models
            import torchvision.transforms.v2.functional  # noqa: F401
            return torchvision
        import timm
        return timm
    except Exception as error:  # not installed, or built for another torch (more than ImportError then)
        reason = f"{library} does not import here ({type(error).__name__}: {str(error)[:160]})"
        if os.environ.get(f"PICNN_EXT_REQUIRE_{library.upper()}") == "1":
            pytest.fail(f"PICNN_EXT_REQUIRE_{library.upper()}=1 but {reason}")
        pytest.skip(reason)


def images(batch, size, channels=3, seed=0):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# (library, name, image side, constructor arguments, expected channels of the feature extractor)
MODELS = [
    ("torchvision", "resnet18", 32, {}, 512),
    ("torchvision", "resnet50", 32, {}, 2048),
    ("torchvision", "vgg11_bn", 32, {}, 512),
    ("torchvision", "densenet121", 32, {}, 1024),
    ("torchvision", "mobilenet_v2", 32, {}, 1280),
    ("torchvision", "mobilenet_v3_small", 32, {}, 576),
    ("torchvision", "efficientnet_b0", 32, {}, 1280),
    ("torchvision", "convnext_tiny", 32, {}, 768),
    ("torchvision", "squeezenet1_1", 64, {}, 512),
    ("torchvision", "vit_b_16", 64, {"image_size": 64}, 768),  # 16 patches instead of 196
    ("timm", "resnet18", 32, {}, 512),
    ("timm", "vit_tiny_patch16_224", 64, {"img_size": 64}, 192),
    ("timm", "convnext_atto", 32, {}, 320),
]


def build(library, name, kwargs):
    module = require(library)
    if library == "torchvision":
        return module.models.get_model(name, weights=None, **kwargs)
    return module.create_model(name, pretrained=False, **kwargs)


def classifier_name(library, model):
    if library == "timm":
        return model.default_cfg["classifier"]
    return next(name for name in ("fc", "classifier", "heads") if hasattr(model, name))


def flops_by_module(module, *args):
    with FlopCounterMode(display=False) as counter:
        module(*args)
    return {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}


def train_step_with_positive_samples(model: PICNN, x, num_classes):
    """A training forward and backward whose sampled classes are all right, so that the interpretation
    loss is not zero: the sampled classes of a first forward become the targets of a second, identical
    one (the same seeds for the draws and for stochastic depth)."""
    model.train()
    torch.manual_seed(1)
    first = model(x, torch.zeros(len(x), dtype=torch.int64), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    out = model(x, first.sampled_class, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out.sampled_class, first.sampled_class) and out.positive.all()
    assert out.logits.shape == out.interp_logits.shape == out.complement_logits.shape == (len(x), num_classes)
    assert out.loss.isfinite()
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    return out


@pytest.mark.parametrize("library, name, size, kwargs, channels", MODELS,
                         ids=[f"{library}-{name}" for library, name, *_ in MODELS])
def test_convert_real_model(library, name, size, kwargs, channels):
    torch.manual_seed(0)
    original = build(library, name, kwargs)
    num_classes, num_filters, batch = 4, 8, 2
    model = convert(original, num_classes, num_filters)
    assert model.in_channels == channels
    assert model.interpreted_activation is None and len(model.interpreted) == 1  # the authors' bare layer
    x = images(batch, size)

    train_step_with_positive_samples(model, x, num_classes)
    assert model.head.theta.grad is not None and model.head.theta.grad.abs().sum() > 0
    assert model.interpreted[0].weight.grad.abs().sum() > 0
    first_parameter = next(model.backbone.parameters())
    assert first_parameter.grad is not None and first_parameter.grad.abs().sum() > 0

    # An eval forward costs the plain network, less its classifier, plus the interpreted layer and the
    # Linear(K, C) head: nothing of the training pathways runs.
    model.eval()
    original.eval()
    with torch.no_grad():
        plain = flops_by_module(original, x)
        features = model.backbone(x)
        converted = flops_by_module(model, x)
    plain_total = plain["Global"] - plain.get(f"{type(original).__name__}.{classifier_name(library, original)}", 0)
    if model.tokens:  # a per-token Linear(D, K) over every token (or position)
        interpreted = 2 * features[..., 0].numel() * channels * num_filters
    else:  # the 3x3 conv over the whole map
        interpreted = 2 * batch * features.shape[2] * features.shape[3] * channels * num_filters * 9
    head = 2 * batch * num_filters * num_classes
    assert converted["Global"] == plain_total + interpreted + head, (converted["Global"], plain_total)
    with torch.no_grad():
        assert model(x).logits.shape == (batch, num_classes)


def test_convert_relu_option_on_a_real_model():
    torch.manual_seed(0)
    model = convert(build("torchvision", "resnet18", {}), 3, 8, interpreted_activation="relu").eval()
    with torch.no_grad():
        A = model.features(images(2, 32))
        conv = model.interpreted[0](model.backbone(images(2, 32)))
    assert isinstance(model.interpreted[1], nn.ReLU)
    torch.testing.assert_close(A, torch.relu(conv))
    assert (conv < 0).any()  # the option changes something


# ----------------------------------------------------------------------------------------------------------
# The registry

def test_create_model_builds_the_library_model_and_converts_it():
    require("torchvision")
    torch.manual_seed(0)
    model = create_model("resnet18", 5, num_filters=8, image_size=32)
    assert isinstance(model, PICNN) and model.in_channels == 512 and model.head.theta.shape == (5, 8)
    assert create_model("torchvision:resnet18", 5, num_filters=8).in_channels == 512
    vit = create_model("vit_b_16", 3, num_filters=4, image_size=(32, 32))  # the token grid follows the image
    assert vit.tokens and vit.features(images(1, 32)).shape == (1, 5, 4)
    with pytest.raises(ValueError, match="square"):
        create_model("vit_b_16", 3, image_size=(32, 48))
    csg = create_model("resnet18", 5, method="csg", num_filters=8, image_size=32)  # CSG reads the same layer
    assert csg.head.G.shape == (5, 8) and csg.interpreted_activation is None
    require("timm")
    timm_vit = create_model("timm:vit_tiny_patch16_224", 3, num_filters=4, image_size=32)
    assert timm_vit.tokens and timm_vit.features(images(1, 32)).shape == (1, 5, 4)  # class token first
    assert not create_model("timm:convnext_atto", 3, num_filters=4, image_size=32).tokens


def test_unknown_model_lists_the_known_ones():
    require("torchvision")
    with pytest.raises(ValueError) as error:
        create_model("resnet1888", 3)
    message = str(error.value)
    assert "resnet1888" in message and "small_cnn" in message and "resnet18," in message and "vit_b_16" in message
    require("timm")
    with pytest.raises(ValueError, match=r"unknown timm model 'nope'.*timm\.list_models\(\)"):
        create_model("timm:nope", 3)
    with pytest.raises(ValueError, match="unknown model 'keras:resnet18'"):
        create_model("keras:resnet18", 3)


def test_a_model_convert_cannot_read_says_what_it_looked_for():
    require("torchvision")
    with pytest.raises(ValueError, match=r"'googlenet'.*cannot find the feature extractor of GoogLeNet: expected "
                                         r"a ResNet .*`forward_features` method or a `.features` module"):
        create_model("googlenet", 3)


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet18", "timm:vit_tiny_patch16_224"])
def test_weights_file_is_loaded_into_the_feature_extractor(tmp_path, name):
    library, _, architecture = name.rpartition(":")
    library = library or "torchvision"
    kwargs = {"img_size": 32} if "vit" in name else {}
    torch.manual_seed(1)
    source = build(library, architecture, kwargs)
    # The file's classifier has another number of classes: convert() drops it, so it is not read.
    state = source.state_dict()
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, path)  # a training script's wrapper is accepted
    torch.manual_seed(2)
    model = create_model(name, 3, num_filters=4, image_size=32, weights=str(path)).eval()
    expected = convert(source, 3, num_filters=4).eval()
    x = images(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), expected.backbone(x), rtol=0, atol=0)
        torch.manual_seed(2)
        assert not torch.equal(create_model(name, 3, num_filters=4, image_size=32).backbone(x), expected.backbone(x))


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    require("torchvision")
    state = build("torchvision", "resnet18", {}).state_dict()
    del state["layer1.0.conv1.weight"]
    state["layer4.1.bn2.weight"] = torch.ones(7)
    state["extra.weight"] = torch.ones(1)
    state["fc.weight"] = torch.ones(10, 512)  # the classifier is not read: another shape is fine
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        create_model("resnet18", 3, weights=str(path))
    message = str(error.value)
    assert "does not fit the model resnet18" in message
    assert "missing 1 key(s): layer1.0.conv1.weight" in message
    assert "the model does not have: extra.weight" in message
    assert "layer4.1.bn2.weight (7,) in the file, (512,) in the model" in message
    assert "fc.weight" not in message
    with pytest.raises(FileNotFoundError, match="no file"):
        create_model("resnet18", 3, weights=str(tmp_path / "absent.pt"))


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_file_with_pickled_code_is_refused(tmp_path):
    require("torchvision")
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pt"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": RunsCode(marker)}, handle)
    with pytest.raises(UnsafeFileError, match="refused to load the weights file"):
        create_model("resnet18", 3, weights=str(path))
    assert not marker.exists()


def test_grey_images_adapt_the_first_conv(tmp_path):
    require("torchvision")
    torch.manual_seed(0)
    source = build("torchvision", "resnet18", {})
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    model = create_model("resnet18", 3, num_filters=4, in_channels=1, weights=str(path)).eval()
    first = model.backbone[0]
    assert first.in_channels == 1
    torch.testing.assert_close(first.weight, source.conv1.weight.sum(1, keepdim=True))
    grey = images(2, 32, channels=1)
    with torch.no_grad():  # a grey image reads as the RGB image with that grey in every channel
        torch.testing.assert_close(model.backbone(grey), convert(source, 3, 4).eval().backbone(grey.expand(-1, 3, -1, -1)))


def test_colour_jitter_matches_torchvision():
    tv = require("torchvision")
    functional = tv.transforms.v2.functional
    pixels = torch.rand(4, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    brightness, contrast, saturation = (torch.tensor(v) for v in ([0.6, 1.4, 1.0, 0.9], [1.3, 0.7, 1.0, 1.2],
                                                                   [0.8, 1.1, 1.4, 0.6]))
    ours = colour_jitter(pixels, brightness, contrast, saturation)
    for i in range(4):
        expected = functional.adjust_brightness(pixels[i], brightness[i].item())
        expected = functional.adjust_contrast(expected, contrast[i].item())
        expected = functional.adjust_saturation(expected, saturation[i].item())
        torch.testing.assert_close(ours[i], expected)


# ----------------------------------------------------------------------------------------------------------
# picnn-ext train --model on a few CIFAR-10 images

def write_cifar(folder, per_batch=8):
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(count):
        return {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                b"labels": [int(i % 10) for i in range(count)]}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump(batch(per_batch), handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, handle, protocol=2)
    return folder


@pytest.mark.parametrize("model, extra", [
    ("resnet18", ["--image-size", "40", "--augment", "--amp", "bf16", "--channels-last"]),
    ("timm:convnext_atto", ["--augment"]),
    ("timm:vit_tiny_patch16_224", ["--image-size", "32", "--interpreted-activation", "relu"]),
])
def test_train_command_with_a_library_model(tmp_path, capsys, model, extra):
    library = "timm" if model.startswith("timm:") else "torchvision"
    require(library)
    data = write_cifar(tmp_path / "cifar-10-batches-py")
    weights = []
    if model == "resnet18":
        torch.save(build("torchvision", "resnet18", {}).state_dict(), tmp_path / "resnet18.pt")
        weights = ["--weights", str(tmp_path / "resnet18.pt")]
    args = ["train", "--model", model, "--dataset", f"cifar10:{data}", "--epochs", "1", "--batch-size", "8",
            "--num-filters", "8", "--out-dir", str(tmp_path / "runs"), "--run-name", "run", "--device", "cpu",
            "--quiet", *weights, *extra]
    import picnn_ext.data.cifar10 as cifar10
    original = cifar10.load_cifar10.__defaults__
    cifar10.load_cifar10.__defaults__ = (8,)  # val_size: 8 of the 40 train images
    try:
        assert main(args) == 0, capsys.readouterr().err
    finally:
        cifar10.load_cifar10.__defaults__ = original
    run_dir = tmp_path / "runs" / "run"
    config = load_config(str(run_dir))
    assert config.backbone == model
    summary = load_summary(str(run_dir))
    assert set(summary["test"]) == {"acc1", "acc2", "acc3", "mis"}
    assert summary["num_parameters"] > 1_000_000  # the library's network, not the small CNN
