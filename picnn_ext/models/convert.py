"""Turn an image classifier into a PICNN (or CSG) network: keep its feature extractor, add the interpreted
layer and the method's head.

    picnn = convert(model, num_classes, num_filters=64)
    csg = convert(model, num_classes, num_filters=64, method="csg")

What is kept, by the structure of the model (torchvision's, timm's, or any model built the same way):
- ResNet (conv1, bn1, relu, maxpool, layer1..layer4, fc): everything up to layer4.
- VisionTransformer (conv_proj, class_token, encoder): the encoder's tokens, class token included, with a
  per-token Linear as the interpreted layer (filters on the last dim).
- a model with `forward_features` (timm): that method's output; a model with a `patch_embed` (ViT, Swin)
  yields its channels on the last dim.
- a model with a `.features` module (VGG, DenseNet, MobileNet V2/V3, EfficientNet, ConvNeXt, SqueezeNet):
  `.features`.
Anything else raises a TypeError that says what was looked for.

The given model is left unchanged: its parts are deep-copied, and its own classifier is dropped.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn import CSG, PICNN, InterpretedNet

__all__ = ["convert"]

_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ViTTokens(nn.Module):
    """images -> the encoder's output tokens (B, 1 + N, D) of a torchvision VisionTransformer.

    The patches are embedded by `conv_proj`, flattened to tokens, and the class token is put first, as the
    ViT does before its encoder; the ViT's classifier, which reads the class token alone, is not kept.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.encoder = vit.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(images).flatten(2).transpose(1, 2)  # (B, N, D)
        class_token = self.class_token.expand(patches.shape[0], -1, -1)
        return self.encoder(torch.cat([class_token, patches], dim=1))


class ForwardFeatures(nn.Module):
    """images -> model.forward_features(images), for models that expose their feature extractor (timm)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def _is_resnet(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, name, None), nn.Module) for name in _RESNET_TRUNK + ("fc",))


def _is_torchvision_vit(model: nn.Module) -> bool:
    return (isinstance(getattr(model, "conv_proj", None), nn.Module)
            and isinstance(getattr(model, "class_token", None), torch.Tensor)
            and isinstance(getattr(model, "encoder", None), nn.Module))


def output_channels(module: nn.Module) -> int | None:
    """The channels of a feature extractor's output, read from its last layer that declares them."""
    for layer in reversed(list(module.modules())):
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            return layer.out_channels
        if isinstance(layer, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            return layer.num_features
        if isinstance(layer, nn.GroupNorm):
            return layer.num_channels
        if isinstance(layer, nn.Linear):  # ConvNeXt blocks end with a per-position Linear
            return layer.out_features
    return None


def _conv_classifier_channels(model: nn.Module) -> int | None:
    """The input channels of a classifier that starts with a conv (SqueezeNet), which reads the features
    as they are; the last layer of `.features` can understate them when blocks concatenate branches."""
    classifier = getattr(model, "classifier", None)
    layers = [m for m in classifier.modules() if not isinstance(m, (nn.Sequential, nn.Dropout))] if classifier else []
    return layers[0].in_channels if layers and isinstance(layers[0], nn.Conv2d) else None


def _features_backbone(features: nn.Module) -> nn.Module:
    # A feature extractor that ends in a normalisation leaves the activation to the model's forward
    # (DenseNet applies relu after norm5): add it, so the interpreted layer sees what the classifier saw.
    children = list(features.children())
    if children and isinstance(children[-1], (nn.BatchNorm2d, nn.GroupNorm)):
        return nn.Sequential(features, nn.ReLU())
    return features


def _backbone_of(model: nn.Module, in_channels: int | None, tokens: bool | None):
    """(backbone, in_channels, tokens) for a deep copy of the model."""
    if _is_torchvision_vit(model):
        width = in_channels or getattr(model, "hidden_dim", None) or model.class_token.shape[-1]
        return ViTTokens(model), width, True if tokens is None else tokens
    if _is_resnet(model):
        trunk = nn.Sequential(*(getattr(model, name) for name in _RESNET_TRUNK))
        width = in_channels or getattr(model.fc, "in_features", None) or output_channels(model.layer4)
        return trunk, width, bool(tokens)
    if callable(getattr(model, "forward_features", None)):
        if callable(getattr(model, "reset_classifier", None)):
            model.reset_classifier(0)  # timm: the copy's own head is not used; drop its parameters
        width = in_channels or getattr(model, "num_features", None)
        # Transformers (ViT, Swin, ...) return channels last: tokens (B, N, D) or (B, H, W, D).
        channels_last = hasattr(model, "patch_embed") if tokens is None else tokens
        return ForwardFeatures(model), width, channels_last
    if isinstance(getattr(model, "features", None), nn.Module):
        width = in_channels or _conv_classifier_channels(model) or output_channels(model.features)
        return _features_backbone(model.features), width, bool(tokens)
    raise TypeError(
        f"convert: cannot find the feature extractor of {type(model).__name__}: expected a ResNet (conv1, bn1, "
        f"relu, maxpool, layer1..layer4, fc), a VisionTransformer (conv_proj, class_token, encoder), a "
        f"`forward_features` method or a `.features` module. Build the model yourself with "
        f"picnn_ext.nn.PICNN(backbone, in_channels, num_classes).")


# The networks convert() builds, by method: each takes (backbone, in_channels, num_classes, num_filters,
# tokens=..., **its head's options).
NETWORKS = {"picnn": PICNN, "csg": CSG}


def convert(model: nn.Module, num_classes: int, num_filters: int = 64, *, method: str = "picnn",
            in_channels: int | None = None, tokens: bool | None = None, **head_options) -> InterpretedNet:
    """A PICNN (or CSG) network on the feature extractor of `model` (see the module's docstring for what is
    recognised).

    Args:
        model: the classifier to convert; it is not modified.
        num_classes: C of the new head.
        num_filters: K, the filters of the added interpreted layer.
        method: "picnn" (a :class:`~picnn_ext.nn.PICNN`) or "csg" (a :class:`~picnn_ext.nn.CSG`).
        in_channels: the feature extractor's output channels, when they cannot be read from the model.
        tokens: whether the features have their channels on the last dim; None decides by the model.
        head_options: the network's own options: ``lam`` (PICNN); ``init``, ``density``, ``lam_reg`` (CSG);
            ``classifier`` (both).
    """
    if method not in NETWORKS:
        raise ValueError(f"convert: method must be one of {', '.join(map(repr, NETWORKS))}, got {method!r}")
    backbone, width, channels_last = _backbone_of(copy.deepcopy(model), in_channels, tokens)
    if not width:
        raise TypeError(f"convert: cannot tell how many channels the feature extractor of {type(model).__name__} "
                        f"outputs; pass in_channels=")
    return NETWORKS[method](backbone, int(width), num_classes, num_filters, tokens=channels_last, **head_options)
