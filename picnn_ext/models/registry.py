"""Models by name: ``create_model(name, num_classes, ...)`` builds the network and converts it into a PICNN
(or CSG) network; ``create_backbone(name, ...)`` gives its feature extractor alone, for the training methods.

Names (``picnn-ext train --model NAME``):

- ``small_cnn``: the package's :class:`SmallConvNet`, sized for the built-in data sets (the default);
- a torchvision classifier: ``resnet18`` or ``torchvision:resnet18`` (``torchvision.models.list_models``);
- a timm model: ``timm:convnext_atto`` (``timm.list_models()``).

Nothing is downloaded: the weights are random (from torch's global generator) unless ``weights`` names a
local state-dict file of the model as its library builds it; its classifier, which :func:`convert` drops, is
not read. torchvision and timm are optional: they are imported when a model of theirs is asked for.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._safe_load import safe_torch_load
from ..nn import InterpretedNet
from .convert import NETWORKS, backbone_state_keys, feature_extractor
from .small_cnn import SmallConvNet

__all__ = ["SMALL_CNN", "available_models", "backbone_stages", "create_backbone", "create_model",
           "load_base_weights", "parse_model_name"]

SMALL_CNN = "small_cnn"
LIBRARIES = ("torchvision", "timm")
ImageSize = Union[int, Sequence[int], None]


def backbone_stages(image_size) -> int:
    """Stages of the small backbone for an image size: each stage after the first halves the map, and
    the map should stay at least 4 pixels wide; 3 stages at most (an 8x8 map for 32x32 images)."""
    smallest_side = min(image_size)
    return min(3, max(1, 1 + int(math.floor(math.log2(max(smallest_side, 1) / 4)))))


def parse_model_name(name: str) -> Tuple[str, str]:
    """``(library, architecture)``: ``("picnn_ext", "small_cnn")``, ``("torchvision", "resnet18")`` for
    ``resnet18`` or ``torchvision:resnet18``, ``("timm", "resnet18")`` for ``timm:resnet18``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model: expected a model name, got {name!r}; {_known_models_text()}")
    library, sep, architecture = name.strip().partition(":")
    if not sep:
        library, architecture = ("picnn_ext" if library == SMALL_CNN else "torchvision"), library
    if library not in LIBRARIES + ("picnn_ext",) or not architecture:
        raise ValueError(f"unknown model {name!r}; {_known_models_text()}")
    return library, architecture


def _import(library: str):
    """The module, or None and the reason it does not import (torchvision fails with more than ImportError
    when it was built for another torch)."""
    try:
        if library == "torchvision":
            import torchvision.models as module
        else:
            import timm as module
    except Exception as error:  # noqa: BLE001 - any failure means the library is unusable here
        return None, f"{library} does not import here ({type(error).__name__}: {str(error)[:200]})"
    return module, None


def available_models() -> Dict[str, List[str]]:
    """The names :func:`create_model` accepts, per library; a library that does not import is left out."""
    names = {"picnn_ext": [SMALL_CNN]}
    models, _ = _import("torchvision")
    if models is not None:
        names["torchvision"] = sorted(models.list_models(module=models))
    timm, _ = _import("timm")
    if timm is not None:
        names["timm"] = sorted(timm.list_models())
    return names


def _known_models_text() -> str:
    parts = [f"known: {SMALL_CNN}"]
    for library in LIBRARIES:
        module, reason = _import(library)
        if module is None:
            parts.append(f"{library} models are unavailable: {reason}")
        elif library == "torchvision":
            parts.append("torchvision's classifiers by name or as torchvision:NAME: "
                         + ", ".join(sorted(module.list_models(module=module))))
        else:
            parts.append(f"timm's models as timm:NAME, NAME one of timm.list_models() "
                         f"({len(module.list_models())} names, e.g. timm:resnet18, timm:vit_tiny_patch16_224)")
    return "; ".join(parts)


def _square_or_pair(image_size: ImageSize):
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size
    height, width = (int(side) for side in image_size)
    return height if height == width else (height, width)


def _build_base(library: str, architecture: str, image_size: ImageSize) -> nn.Module:
    """The library's model with its own default classifier (so that its published state dicts fit)."""
    module, reason = _import(library)
    if module is None:
        raise ImportError(f"model {library}:{architecture}: {reason}")
    size = _square_or_pair(image_size)
    if library == "torchvision":
        names = module.list_models(module=module)
        if architecture not in names:
            raise ValueError(f"unknown torchvision model {architecture!r}; {_known_models_text()}")
        kwargs = {"weights": None}
        if architecture.startswith("vit_") and size is not None:
            if not isinstance(size, int):
                raise ValueError(f"model {architecture}: torchvision's ViT needs square images, got {image_size}")
            kwargs["image_size"] = size  # the positional embedding is laid out for this size
        return module.get_model(architecture, **kwargs)
    if not module.is_model(architecture):
        raise ValueError(f"unknown timm model {architecture!r}; {_known_models_text()}")
    if size is not None:
        try:  # models with a fixed token grid (ViT and kin) take the image size; the others refuse it
            return module.create_model(architecture, pretrained=False, img_size=size)
        except TypeError:
            pass
    return module.create_model(architecture, pretrained=False)


def _unwrap_state_dict(state, path: str) -> Dict[str, torch.Tensor]:
    # A training script's checkpoint often holds the weights under one of these keys.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ValueError(f"weights: {path} is not a state dict (a mapping of names to tensors)")
    # Saved from a DistributedDataParallel wrapper: every name starts with "module.".
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def _listed(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_base_weights(model: nn.Module, path: str, name: str) -> None:
    """Load the state-dict file ``path`` into ``model`` (before conversion), reading only the keys that the
    converted network keeps; any such key missing or of another shape, or a key the model does not have,
    is an error that names them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights: no file at {path}")
    state = _unwrap_state_dict(safe_torch_load(path, what="weights file"), path)
    expected = model.state_dict()
    needed = set(expected) if isinstance(model, SmallConvNet) else backbone_state_keys(model)
    missing = needed - set(state)
    unexpected = set(state) - set(expected)
    wrong_shape = {key for key in needed & set(state) if state[key].shape != expected[key].shape}
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} key(s): {_listed(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} key(s) the model does not have: {_listed(unexpected)}")
        if wrong_shape:
            problems.append("other shapes: " + _listed(
                f"{key} {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
                for key in wrong_shape))
        raise ValueError(f"weights: {path} does not fit the model {name}: " + "; ".join(problems))
    model.load_state_dict({key: state[key] for key in needed}, strict=False)


def _adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Make the first conv read ``in_channels`` instead of 3 (grey images): its filters are summed over the
    colour channels (1 channel) or repeated and rescaled (timm's adapt_input_conv), so that loaded
    weights keep their meaning."""
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Conv2d):
            break
    else:
        raise ValueError(f"model {type(model).__name__}: no Conv2d found to take {in_channels} input channels")
    if layer.in_channels == in_channels:
        return
    if layer.groups != 1:
        raise ValueError(f"model {type(model).__name__}: its first conv is grouped; cannot adapt it to "
                         f"{in_channels} input channels")
    new = nn.Conv2d(in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                    layer.dilation, bias=layer.bias is not None, padding_mode=layer.padding_mode)
    with torch.no_grad():
        weight = layer.weight
        if in_channels == 1:
            new.weight.copy_(weight.sum(1, keepdim=True))
        else:
            repeats = -(-in_channels // weight.shape[1])
            new.weight.copy_(weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels))
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child_name, new)


def create_backbone(name: str, *, in_channels: int = 3, image_size: ImageSize = None, weights: Optional[str] = None,
                    width: int = 32, stages: Optional[int] = None) -> Tuple[nn.Module, int, bool]:
    """(backbone, its output channels, whether it yields tokens) of model ``name``: the feature extractor
    that :func:`convert` keeps, of the library's model with random weights or ``weights`` loaded.

    Args:
        in_channels: image channels; a torchvision/timm model's first conv is adapted when not 3.
        image_size: (H, W) or a side; decides the small CNN's stages, and the token grid of ViTs.
        weights: a local state-dict file of the library's model (loaded before its classifier is dropped).
        width, stages: the small CNN's (ignored for the others).
    """
    library, architecture = parse_model_name(name)
    if library == "picnn_ext":
        if stages is None:
            stages = backbone_stages(_pair(image_size) if image_size is not None else (8, 8))
        base = SmallConvNet(in_channels, width=width, stages=stages)
        if weights is not None:
            load_base_weights(base, weights, name)
        return base, base.out_channels, False
    base = _build_base(library, architecture, image_size)
    try:
        if weights is not None:
            load_base_weights(base, weights, name)
        if in_channels != 3:
            _adapt_input_channels(base, in_channels)
        return feature_extractor(base)
    except TypeError as error:  # convert() says what it looked for; here that is bad input, not a bug
        raise ValueError(f"model {name!r}: {error}") from error


def create_model(name: str, num_classes: int, *, method: str = "picnn", num_filters: int = 64,
                 in_channels: int = 3, image_size: ImageSize = None, weights: Optional[str] = None,
                 width: int = 32, stages: Optional[int] = None, **network_options) -> InterpretedNet:
    """The PICNN (or CSG, ``method="csg"``) network of model ``name`` (see the module's docstring) with
    ``num_filters`` interpreted filters; the arguments of :func:`create_backbone`, and the network's own
    options (``lam``, ``interpreted_activation``, ...)."""
    if method not in NETWORKS:
        raise ValueError(f"create_model: method must be one of {', '.join(map(repr, NETWORKS))}, got {method!r}")
    backbone, channels, tokens = create_backbone(name, in_channels=in_channels, image_size=image_size,
                                                 weights=weights, width=width, stages=stages)
    return NETWORKS[method](backbone, channels, num_classes, num_filters, tokens=tokens, **network_options)


def _pair(image_size) -> Tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
