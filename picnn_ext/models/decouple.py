"""Network decoupling (NND, DESIGN.md section 5): every conv layer's output gated per input.

    net = decouple(model, num_classes)          # a DecoupledNet; `model` is left unchanged
    out = net(images, targets, generator=g)     # NNDOutput: logits, gates, pooled, features, loss
    logits = net.forward_skip(images)           # eval mode: gated-off filters are not computed

What is recognised, by the structure of the model:
- a ResNet built like torchvision's (conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc; blocks with
  conv1, bn1, conv2, bn2[, conv3, bn3], downsample): the stem and the convs inside each block that are
  followed by BN and ReLU are gated; the classifier is the model's own ``fc``.
- a VGG (``features``, ``avgpool``, ``classifier``): every conv of ``features``; the model's classifier.
- a plain stack of convs, an ``nn.Sequential`` such as :class:`~picnn_ext.models.SmallConvNet`: every conv,
  with a GAP + Linear(out_channels, num_classes) classifier added (``num_classes`` is then required).
A conv's gate multiplies its output after the BN and the activation that follow it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from ..nn.nnd_loss import LAMBDA_K, LAMBDA_M, LAMBDA_S, TAU, NNDLoss, NNDLossParts
from .gated import Compact, GatedBasicBlock, GatedBottleneck, GatedConv, PathRecorder, run_skip

__all__ = ["DecoupledNet", "NNDOutput", "decouple"]

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


@dataclass
class NNDOutput:
    logits: torch.Tensor                   # (B, C)
    gates: List[torch.Tensor]              # per gated layer (B, K_l): the calculation path of each input
    pooled: List[torch.Tensor]             # per gated layer (B, K_l): GAP of the output before the gate
    features: Optional[torch.Tensor]       # the last gated layer's gated map (B, K, H, W)
    loss: Optional[torch.Tensor] = None    # the NND objective, when targets were given
    loss_parts: Optional[NNDLossParts] = None


class DecoupledNet(nn.Module):
    """A body whose conv layers are gated, and a classifier; see :func:`decouple`."""

    def __init__(self, body: nn.Module, classifier: nn.Module, num_classes: int, *, lambda_s: float = LAMBDA_S,
                 tau: float = TAU, lambda_m: float = LAMBDA_M, lambda_k: float = LAMBDA_K):
        super().__init__()
        self.body = body
        self.classifier = classifier
        self.num_classes = num_classes
        units = [module for module in body.modules() if isinstance(module, GatedConv)]
        if not units:
            raise ValueError("decouple: the model has no conv layer to gate")
        self.criterion = NNDLoss([unit.out_channels for unit in units], num_classes, lambda_s=lambda_s, tau=tau,
                                 lambda_m=lambda_m, lambda_k=lambda_k)
        self.recorder = PathRecorder()
        for unit in units:
            unit.recorder = self.recorder

    @property
    def gated_layers(self) -> List[GatedConv]:
        return [module for module in self.body.modules() if isinstance(module, GatedConv)]

    @property
    def widths(self) -> List[int]:
        return list(self.criterion.widths)

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
                generator: Optional[torch.Generator] = None) -> NNDOutput:
        self.recorder.start(generator)
        logits = self.classifier(self.body(images))
        recorder = self.recorder
        gates, pooled, features = recorder.gates, recorder.pooled, recorder.last_map
        recorder.start(None)  # hold no tensors between calls
        parts = None
        if targets is not None:
            parts = self.criterion(logits, gates, pooled, targets)
        return NNDOutput(logits, gates, pooled, features, parts.total if parts is not None else None, parts)

    @torch.no_grad()
    def forward_skip(self, images: torch.Tensor, *, count_macs: bool = False,
                     memory_format: Optional[torch.memory_format] = None):
        """Eval-mode logits that compute only the open filters (the union over the batch), from only the
        open input channels; equal to ``forward(images).logits`` in eval mode. With count_macs, returns
        ``(logits, gates, (computed, dense))``: the convs' multiply-adds done here and in the dense network.
        ``memory_format``: the layout the maps take (see :func:`skip_layout`); by default channels_last for
        images on the CPU, where it is the faster one, the images' own elsewhere."""
        if self.training:
            raise RuntimeError("DecoupledNet.forward_skip: call model.eval() first; training draws random gates")
        images = skip_layout(images, memory_format, "DecoupledNet.forward_skip")
        self.recorder.start(None, count_macs=count_macs)
        try:
            # The classifier's pooling runs on the open channels too; the map is made dense once pooled.
            logits = run_skip(self.classifier, run_skip(self.body, Compact.of(images))).dense()
            gates = [gate.to(images.dtype) for gate in self.recorder.gates] if count_macs else None
            macs = self.recorder.macs
        finally:
            self.recorder.start(None)
        return (logits, gates, tuple(macs)) if count_macs else logits

    @torch.no_grad()
    def forward_plain(self, images: torch.Tensor, *, count_macs: bool = False,
                      memory_format: Optional[torch.memory_format] = None):
        """Eval-mode logits of the network without its gates: every filter computed, no controller run,
        each conv's batch norm folded in and the maps in the same layout as on the skipping path; what
        :meth:`forward_skip`'s speed is measured against (``benchmarks/nnd_speed.py``). With count_macs,
        returns ``(logits, macs)``."""
        if self.training:
            raise RuntimeError("DecoupledNet.forward_plain: call model.eval() first; it folds the running statistics")
        images = skip_layout(images, memory_format, "DecoupledNet.forward_plain")
        self.recorder.start(None, count_macs=count_macs)
        try:
            logits = run_skip(self.classifier, run_skip(self.body, Compact.of(images), plain=True),
                              plain=True).dense()
            macs = self.recorder.macs
        finally:
            self.recorder.start(None)
        return (logits, macs[0]) if count_macs else logits


_LAYOUTS = (torch.contiguous_format, torch.channels_last, torch.preserve_format)


def skip_layout(images: torch.Tensor, memory_format: Optional[torch.memory_format], op: str) -> torch.Tensor:
    """The images in the layout the skipping path (and plain) run in. None: channels_last for (B, C, H, W)
    images on the CPU, else as they are. On the CPU channels_last is the faster layout for both paths, and
    more so for the skipping path's narrow convs (ResNet-50 at 224 px, 2 threads, 25% of the filters open:
    20.3 ms against 23.5 ms contiguous at batch 1, 345 ms against 485 ms at batch 32; benchmarks/nnd_pieces.py):
    oneDNN's convs read and write it without reordering, and torch's max pool is several times faster in it.
    ``torch.contiguous_format``, or ``torch.preserve_format`` (as given), choose otherwise."""
    if memory_format is None:
        memory_format = (torch.channels_last if images.device.type == "cpu" and images.dim() == 4
                         else torch.preserve_format)
    if memory_format not in _LAYOUTS:
        raise ValueError(f"{op}: memory_format must be None, torch.contiguous_format, torch.channels_last or "
                         f"torch.preserve_format, got {memory_format!r}")
    if memory_format is torch.preserve_format:
        return images
    if memory_format is torch.channels_last and images.dim() != 4:
        raise ValueError(f"{op}: memory_format=torch.channels_last needs (B, C, H, W) images, got shape "
                         f"{tuple(images.shape)}")
    return images.contiguous(memory_format=memory_format)


def _gate_sequence(modules: List[nn.Module], reduction: int) -> nn.Sequential:
    """Each Conv2d with the BatchNorm2d and ReLU right after it becomes one GatedConv; nested Sequentials
    (SmallConvNet's conv-bn-relu blocks) are read as one flat sequence."""
    flat: List[nn.Module] = []

    def flatten(module_list):
        for module in module_list:
            # a Sequential (or a subclass such as SmallConvNet that keeps its forward) is just its children
            if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
                flatten(list(module))
            else:
                flat.append(module)

    flatten(modules)
    out: List[nn.Module] = []
    i = 0
    while i < len(flat):
        module = flat[i]
        if not isinstance(module, nn.Conv2d):
            out.append(module)
            i += 1
            continue
        bn = act = None
        i += 1
        if i < len(flat) and isinstance(flat[i], nn.BatchNorm2d):
            bn, i = flat[i], i + 1
        if i < len(flat) and isinstance(flat[i], nn.ReLU):
            act, i = nn.ReLU(inplace=True), i + 1
        out.append(GatedConv(module, bn, act, reduction=reduction))
    return nn.Sequential(*out)


def _is_resnet(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, name, None), nn.Module) for name in _RESNET_PARTS)


def _gate_block(block: nn.Module, reduction: int) -> nn.Module:
    names = ("conv1", "bn1", "conv2", "bn2")
    if not all(isinstance(getattr(block, name, None), nn.Module) for name in names):
        raise TypeError(f"decouple: a ResNet block must have conv1, bn1, conv2, bn2 (torchvision's BasicBlock "
                        f"or Bottleneck), got {type(block).__name__}")
    if isinstance(getattr(block, "conv3", None), nn.Module):
        return GatedBottleneck(block, reduction=reduction)
    return GatedBasicBlock(block, reduction=reduction)


def _resnet_parts(model: nn.Module, reduction: int):
    stem = GatedConv(model.conv1, model.bn1, nn.ReLU(inplace=True), reduction=reduction)
    stages = [nn.Sequential(*(_gate_block(block, reduction) for block in getattr(model, f"layer{i}")))
              for i in range(1, 5)]
    body = nn.Sequential(stem, model.maxpool, *stages)
    return body, nn.Sequential(model.avgpool, nn.Flatten(1), model.fc), model.fc.out_features


def _classes_of(classifier: nn.Module) -> Optional[int]:
    linears = [module for module in classifier.modules() if isinstance(module, nn.Linear)]
    return linears[-1].out_features if linears else None


def decouple(model: nn.Module, num_classes: Optional[int] = None, *, reduction: int = 4,
             lambda_s: float = LAMBDA_S, tau: float = TAU, lambda_m: float = LAMBDA_M,
             lambda_k: float = LAMBDA_K) -> DecoupledNet:
    """A :class:`DecoupledNet` from a copy of ``model`` (see the module's docstring for what is recognised).

    Args:
        model: a torchvision-style ResNet or VGG, or an nn.Sequential of convs (SmallConvNet).
        num_classes: C; required for a plain conv stack (which has no classifier), else read from the
            model's classifier and checked against this value when both are given.
        reduction: the controllers' hidden width is out_channels // reduction.
        lambda_s, tau, lambda_m, lambda_k: the loss weights (:class:`~picnn_ext.nn.NNDLoss`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"decouple: model must be an nn.Module, got {type(model).__name__}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"decouple: num_classes must be a positive int, got {num_classes!r}")
    model = copy.deepcopy(model)
    if _is_resnet(model):
        body, classifier, own_classes = _resnet_parts(model, reduction)
    elif all(isinstance(getattr(model, name, None), nn.Module) for name in ("features", "avgpool", "classifier")):
        body = nn.Sequential(_gate_sequence(list(model.features), reduction), model.avgpool)
        classifier = nn.Sequential(nn.Flatten(1), model.classifier)
        own_classes = _classes_of(model.classifier)
    elif isinstance(model, nn.Sequential):
        body = _gate_sequence(list(model), reduction)
        units = [module for module in body if isinstance(module, GatedConv)]
        if not units:
            raise ValueError(f"decouple: model ({type(model).__name__}) has no conv layer to gate")
        if num_classes is None:
            raise ValueError("decouple: num_classes is required for a plain conv stack (it gets a new GAP + "
                             "Linear classifier)")
        classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                   nn.Linear(units[-1].out_channels, num_classes))
        own_classes = num_classes
    else:
        raise TypeError(f"decouple: cannot find the conv layers of {type(model).__name__}: expected a ResNet "
                        f"(conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc), a VGG (features, avgpool, "
                        f"classifier) or an nn.Sequential of convs")
    if num_classes is not None and own_classes is not None and own_classes != num_classes:
        raise ValueError(f"decouple: num_classes = {num_classes}, but the model's classifier has {own_classes} "
                         f"outputs")
    num_classes = num_classes or own_classes
    if num_classes is None:
        raise ValueError(f"decouple: cannot read the classes of {type(model).__name__}'s classifier; pass num_classes")
    return DecoupledNet(body, classifier, num_classes, lambda_s=lambda_s, tau=tau, lambda_m=lambda_m,
                        lambda_k=lambda_k)
