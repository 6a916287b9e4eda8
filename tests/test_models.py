"""Tests of the PICNN wrapper, the small backbone, convert() and the pathway accuracies.

convert() is tested on small networks built like torchvision's (a ResNet, `.features` models, a ViT) and a
timm-like one; tests/test_backbones.py runs it on torchvision's and timm's own models where they import.
"""
import math

import pytest
import torch
from torch import nn

from picnn_ext.metrics.accuracy import PathwayAccuracy, accuracy_pathways
from picnn_ext.models import SmallConvNet, convert
from picnn_ext.models.convert import ViTTokens
from picnn_ext.nn import PICNN, PICNNHead, PICNNOutput


def images(batch=4, channels=3, size=32, seed=0):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def check_trains(model: PICNN, x: torch.Tensor, num_classes: int):
    """A training step gives every pathway, a finite loss, and gradients for theta and the new layer."""
    model.train()
    targets = torch.arange(x.shape[0]) % num_classes
    out = model(x, targets)
    assert isinstance(out, PICNNOutput)
    assert out.logits.shape == out.interp_logits.shape == out.complement_logits.shape == (x.shape[0], num_classes)
    assert out.mask.shape == (x.shape[0], model.num_filters)
    assert out.loss.isfinite()
    out.loss.backward()
    assert model.head.theta.grad is not None
    assert model.interpreted[0].weight.grad is not None
    model.eval()
    out = model(x)
    assert out.interp_logits is None and out.logits.shape == (x.shape[0], num_classes)


# ----------------------------------------------------------------------------------------------------------
# SmallConvNet and PICNN

@pytest.mark.parametrize("in_channels, size, stages, out_size", [(1, 8, 2, 4), (3, 32, 3, 8), (3, 32, 1, 32)])
def test_small_conv_net_shapes(in_channels, size, stages, out_size):
    backbone = SmallConvNet(in_channels, width=8, stages=stages)
    out = backbone(images(2, in_channels, size))
    assert out.shape == (2, backbone.out_channels, out_size, out_size)
    assert backbone.out_channels == 8 * 2 ** (stages - 1)
    assert (out >= 0).all()  # ends with a ReLU


def test_picnn_features_and_pathways():
    torch.manual_seed(0)
    backbone = SmallConvNet(1, width=8)
    model = PICNN(backbone, backbone.out_channels, num_classes=10, num_filters=12)
    x = images(6, 1, 8)
    model.eval()
    A = model.features(x)
    assert A.shape == (6, 12, 4, 4)
    # The authors' interpreted layer: a bare 3x3 conv, so A takes both signs.
    torch.testing.assert_close(A, model.interpreted[0](backbone(x)))
    assert (A < 0).any() and (A > 0).any()
    assert isinstance(model.head, PICNNHead) and model.head.theta.shape == (10, 12)
    torch.testing.assert_close(model(x).logits, model.head.classifier(A.mean((2, 3))))
    check_trains(model, x, 10)


def test_picnn_relu_option():
    torch.manual_seed(0)
    backbone = SmallConvNet(1, width=8)
    model = PICNN(backbone, backbone.out_channels, num_classes=10, num_filters=12, interpreted_activation="relu")
    x = images(6, 1, 8)
    torch.testing.assert_close(model.features(x), torch.relu(model.interpreted[0](backbone(x))))
    assert (model.features(x) == 0).any()
    with pytest.raises(ValueError, match="interpreted_activation must be None .* or 'relu', got 'gelu'"):
        PICNN(backbone, backbone.out_channels, 10, interpreted_activation="gelu")
    for name in ("none", "relu"):  # both layers train
        check_trains(convert(TinyResNet(), 5, 6, interpreted_activation=None if name == "none" else name), images(), 5)


def test_picnn_on_tokens():
    """A token backbone: the interpreted layer is a per-token Linear and the filters lie on the last dim."""
    backbone = nn.Sequential(nn.Flatten(2), Transpose(), nn.Linear(3, 16))  # (B, 3, H, W) -> (B, H*W, 16)
    model = PICNN(backbone, 16, num_classes=5, num_filters=8, tokens=True)
    x = images(4, 3, 4)
    assert model.features(x).shape == (4, 16, 8)
    assert model.head.channel_dim == -1
    check_trains(model, x, 5)


class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------
# Small networks built like torchvision's

class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """torchvision.models.ResNet's attribute names and forward, a few channels wide."""

    def __init__(self, num_classes=7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(4, 4)
        self.layer2 = BasicBlock(4, 8, 2)
        self.layer3 = BasicBlock(8, 8, 2)
        self.layer4 = BasicBlock(8, 12, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, num_classes)

    def trunk(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.trunk(x)), 1))


class FeaturesNet(nn.Module):
    """`.features` + `.classifier`, the layout of VGG, DenseNet, MobileNet, EfficientNet and ConvNeXt."""

    def __init__(self, features, classifier):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, then a per-position MLP in channels-last layout, plus the input."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute(0, 2, 3, 1),
                                   nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                   Permute(0, 3, 1, 2))

    def forward(self, x):
        return x + self.block(x)


def vgg_like():
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 10, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    return FeaturesNet(features, nn.Linear(10, 7)), 10


def densenet_like():  # ends in a batch norm; DenseNet's forward applies the ReLU
    features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))
    return FeaturesNet(features, nn.Linear(6, 7)), 6


def mobilenet_v3_like():  # features end conv-bn-hardswish; classifier Linear, Hardswish, Dropout, Linear
    features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 9, 3, 2, 1), nn.BatchNorm2d(9), nn.Hardswish()))
    classifier = nn.Sequential(nn.Linear(9, 20), nn.Hardswish(), nn.Dropout(), nn.Linear(20, 7))
    return FeaturesNet(features, classifier), 9


def squeezenet_like():  # the last block concatenates two branches; the classifier starts with a conv
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), ConcatBranches(4, 5, 6))
    classifier = nn.Sequential(nn.Dropout(), nn.Conv2d(11, 7, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    return FeaturesNet(features, classifier), 11


class ConcatBranches(nn.Module):
    def __init__(self, in_channels, first, second):
        super().__init__()
        self.first = nn.Conv2d(in_channels, first, 1)
        self.second = nn.Conv2d(in_channels, second, 3, padding=1)

    def forward(self, x):
        return torch.relu(torch.cat([self.first(x), self.second(x)], 1))


def convnext_like():
    features = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Sequential(ConvNeXtBlock(8), ConvNeXtBlock(8)))
    return FeaturesNet(features, nn.Sequential(nn.Flatten(1), nn.Linear(8, 7))), 8


class Encoder(nn.Module):
    """torchvision's ViT encoder: positional embedding, layers, final LayerNorm."""

    def __init__(self, seq_length, hidden_dim):
        super().__init__()
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, seq_length, hidden_dim))
        self.layers = nn.TransformerEncoderLayer(hidden_dim, 2, 2 * hidden_dim, dropout=0.0, batch_first=True)
        self.ln = nn.LayerNorm(hidden_dim)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))


class TinyViT(nn.Module):
    """torchvision.models.VisionTransformer's attribute names and forward."""

    def __init__(self, image_size=16, patch_size=4, hidden_dim=12, num_classes=7):
        super().__init__()
        self.patch_size, self.hidden_dim = patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.randn(1, 1, hidden_dim))
        self.encoder = Encoder((image_size // patch_size) ** 2 + 1, hidden_dim)
        self.heads = nn.Sequential(nn.Linear(hidden_dim, num_classes))

    def _process_input(self, x):
        n, _, h, w = x.shape
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // self.patch_size) * (w // self.patch_size))
        return x.permute(0, 2, 1)

    def encoded(self, x):
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)

    def forward(self, x):
        return self.heads(self.encoded(x)[:, 0])


class TimmLike(nn.Module):
    """A model that exposes its feature extractor through forward_features and num_features."""

    def __init__(self, transformer=False):
        super().__init__()
        self.num_features = 10
        if transformer:
            self.patch_embed = nn.Conv2d(3, 10, 4, 4)
        self.body = nn.Sequential(nn.Conv2d(3, 10, 4, 4), nn.ReLU())
        self.head = nn.Linear(10, 7)

    def forward_features(self, x):
        if hasattr(self, "patch_embed"):
            return self.patch_embed(x).flatten(2).transpose(1, 2)  # tokens (B, N, D)
        return self.body(x)

    def reset_classifier(self, num_classes):
        self.head = nn.Linear(10, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.head(self.forward_features(x).mean(1 if hasattr(self, "patch_embed") else (2, 3)))


# ----------------------------------------------------------------------------------------------------------
# convert()

def check_left_unchanged(original, before, picnn):
    """convert copies: the original's parameters are untouched and not shared with the PICNN."""
    for name, value in original.state_dict().items():
        assert torch.equal(value, before[name]), name
    original_ids = {id(p) for p in original.parameters()}
    assert not original_ids & {id(p) for p in picnn.parameters()}


def test_convert_resnet():
    original = TinyResNet().eval()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model = convert(original, num_classes=5, num_filters=6).eval()
    x = images()
    assert model.in_channels == 12 and model.num_filters == 6
    torch.testing.assert_close(model.backbone(x), original.trunk(x))  # the same layers with the same weights
    assert model.features(x).shape == (4, 6, 1, 1)
    check_trains(model, x, 5)
    check_left_unchanged(original, before, model)


@pytest.mark.parametrize("build", [vgg_like, densenet_like, mobilenet_v3_like, squeezenet_like, convnext_like])
def test_convert_features_models(build):
    original, channels = build()
    original.eval()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model = convert(original, num_classes=5, num_filters=6).eval()
    x = images()
    assert model.in_channels == channels
    expected = original.features(x)
    if build is densenet_like:  # the ReLU of DenseNet's forward is kept in the backbone
        expected = torch.relu(expected)
    torch.testing.assert_close(model.backbone(x), expected)
    check_trains(model, x, 5)
    check_left_unchanged(original, before, model)


def test_convert_vit():
    original = TinyViT().eval()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model = convert(original, num_classes=5, num_filters=6).eval()
    x = images(size=16)
    assert isinstance(model.backbone, ViTTokens) and model.tokens and model.in_channels == 12
    torch.testing.assert_close(model.backbone(x), original.encoded(x))  # all tokens, class token first
    assert model.features(x).shape == (4, 17, 6)
    assert not any("heads" in name for name, _ in model.named_parameters())
    check_trains(model, x, 5)
    check_left_unchanged(original, before, model)


@pytest.mark.parametrize("transformer", [False, True])
def test_convert_forward_features(transformer):
    original = TimmLike(transformer)
    model = convert(original, num_classes=5, num_filters=6)
    x = images(size=16)
    assert model.tokens == transformer and model.in_channels == 10
    assert model.features(x).shape == ((4, 16, 6) if transformer else (4, 6, 4, 4))
    assert isinstance(original.head, nn.Linear)  # the original keeps its classifier; the copy dropped it
    assert not any(name.endswith("head.weight") and "model" in name for name, _ in model.named_parameters())
    check_trains(model, x, 5)


def test_convert_explains_what_it_cannot_read():
    with pytest.raises(TypeError, match="cannot find the feature extractor of Sequential"):
        convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3)), 3)
    no_channels = FeaturesNet(nn.Sequential(nn.Identity()), nn.Linear(3, 7))
    with pytest.raises(TypeError, match="pass in_channels"):
        convert(no_channels, 3)
    model = convert(no_channels, 3, num_filters=4, in_channels=3)
    assert model.features(images(2, 3, 8)).shape == (2, 4, 8, 8)


# ----------------------------------------------------------------------------------------------------------
# Accuracy of the pathways

def test_accuracy_pathways():
    targets = torch.tensor([0, 1, 2, 1])
    logits = torch.eye(3)[[0, 1, 2, 0]]         # 3 of 4 right
    interp_logits = torch.eye(3)[[0, 1, 0, 0]]  # 2 of 4
    complement_logits = torch.eye(3)[[2, 2, 0, 0]]  # 0 of 4
    assert accuracy_pathways(logits, interp_logits, complement_logits, targets) == dict(acc1=0.75, acc2=0.5, acc3=0.0)
    result = accuracy_pathways(logits, None, None, targets)
    assert result["acc1"] == 0.75 and math.isnan(result["acc2"]) and math.isnan(result["acc3"])
    with pytest.raises(ValueError, match="shape"):
        accuracy_pathways(logits[:3], None, None, targets)


def test_pathway_accuracy_streams_over_batches():
    generator = torch.Generator().manual_seed(0)
    logits, interp_logits, complement_logits = (torch.randn(50, 5, generator=generator) for _ in range(3))
    targets = torch.randint(0, 5, (50,), generator=generator)
    meter = PathwayAccuracy()
    for start in range(0, 50, 16):
        batch = slice(start, start + 16)
        meter.update(logits[batch], interp_logits[batch], complement_logits[batch], targets[batch])
    expected = {name: (l.argmax(1) == targets).float().mean().item()
                for name, l in zip(("acc1", "acc2", "acc3"), (logits, interp_logits, complement_logits))}
    assert meter.compute() == pytest.approx(expected)
    meter.reset()
    assert math.isnan(meter.compute()["acc1"])
