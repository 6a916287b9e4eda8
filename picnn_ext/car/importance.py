"""CAR, classification accuracy reduction (Abbasi-Asl and Yu; DESIGN.md section 6).

``CAR(i) = Acc(net) - Acc(net with filter i removed)``, and the class-wise ``CAR_c(i)`` the same on the
images of class ``c``: a (K, C) matrix. Three ways to evaluate the K networks with one filter removed, all
in one pass over the data:

- the interpreted layer in front of the package's default head (global average pooling + Linear): removing
  filter i changes the logits by ``-W[:, i] * a_i`` (``a`` the pooled features), so the K candidate logits
  of a batch are one broadcast, (B, K, C), with no further forward pass;
- the interpreted layer in front of any other head: ``A`` is computed once per batch and the head runs on
  copies of ``A`` gated by candidate masks (``bernoulli_gate(hard=False)``, one mask row per copy);
- any other layer, named by ``layer``: a forward hook repeats the layer's output over a chunk of candidate
  masks and gates its channels with the same op, where removing the filter puts its zero (see
  :mod:`._layers`); the network before the layer runs once per batch (the whole batch is repeated instead
  where the rest of the network reads something computed before the layer, see :class:`_LayerHook`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn

from .. import ops
from ..nn.pooling import global_pool
from ._layers import ChannelGroup, model_logits, named_module, trace_group

__all__ = ["FilterImportance", "filter_importance", "model_device"]

# Elements of the (B, k, C) candidate logits of one chunk of the closed form: bounds its memory.
CLOSED_FORM_CHUNK = 2**22
DEFAULT_MAX_BATCH = 1024


@dataclass
class FilterImportance:
    """CAR of the K filters of one layer, measured on ``num_samples`` images of C classes.

    Accuracies are fractions in [0, 1]; a class without images has NaN class accuracies and class-wise CAR.
    """

    layer: str                            # "interpreted" (layer=None) or the module's name
    num_samples: int
    accuracy: float                       # Acc(net)
    removed_accuracy: torch.Tensor        # (K,) Acc(net with filter i removed)
    car: torch.Tensor                     # (K,) accuracy - removed_accuracy
    class_counts: torch.Tensor            # (C,) int64, images per class
    class_accuracy: torch.Tensor          # (C,)
    class_removed_accuracy: torch.Tensor  # (K, C)
    class_car: torch.Tensor               # (K, C) class_accuracy - class_removed_accuracy

    @property
    def num_filters(self) -> int:
        return self.car.shape[0]

    @property
    def num_classes(self) -> int:
        return self.class_counts.shape[0]

    def most_important_class(self) -> torch.Tensor:
        """(K,) each filter's most important class: the argmax over classes of its class-wise CAR; -1 where
        removing the filter costs no class any accuracy."""
        return most_important_class(self.class_car)

    def to_dict(self) -> Dict[str, Any]:
        """Plain lists and numbers for JSON; NaN becomes None."""
        def plain(tensor: torch.Tensor):
            return [None if isinstance(v, float) and math.isnan(v) else v for v in tensor.tolist()] \
                if tensor.dim() == 1 else [plain(row) for row in tensor]
        return {
            "layer": self.layer, "num_samples": self.num_samples, "num_filters": self.num_filters,
            "num_classes": self.num_classes, "accuracy": self.accuracy,
            "removed_accuracy": plain(self.removed_accuracy), "car": plain(self.car),
            "class_counts": self.class_counts.tolist(), "class_accuracy": plain(self.class_accuracy),
            "class_removed_accuracy": plain(self.class_removed_accuracy), "class_car": plain(self.class_car),
            "most_important_class": self.most_important_class().tolist(),
        }


def most_important_class(class_car: torch.Tensor) -> torch.Tensor:
    """(K,) argmax over classes of a (K, C) class-wise CAR, and -1 for a filter whose removal costs no class
    any accuracy (largest class-wise CAR <= 0: the argmax would only be the first of tied zeros). Classes
    without images (NaN) never win."""
    best, classes = torch.nan_to_num(torch.as_tensor(class_car).double(), nan=-math.inf).max(dim=1)
    return torch.where(best > 0, classes, torch.full_like(classes, -1))


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class _Counts:
    """Correct predictions per class, of the whole network and of each candidate: float64 sums of 0/1,
    exact up to 2^53 images."""

    def __init__(self, num_filters: int, num_classes: int, device):
        self.images = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.removed_correct = torch.zeros(num_filters, num_classes, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        ones = torch.ones_like(labels, dtype=torch.float64)
        self.images.index_add_(0, labels, ones)
        self.correct.index_add_(0, labels, (logits.argmax(dim=1) == labels).double())

    def add_removed(self, start: int, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """predictions (B, k): the class each candidate start..start+k-1 predicts for each image."""
        correct = (predictions == labels[:, None]).double().t()  # (k, B)
        self.removed_correct[start:start + correct.shape[0]].index_add_(1, labels, correct)

    def result(self, layer: str) -> FilterImportance:
        images = self.images.cpu()
        correct, removed_correct = self.correct.cpu(), self.removed_correct.cpu()
        total = images.sum()
        accuracy = correct.sum() / total
        removed_accuracy = removed_correct.sum(dim=1) / total
        # 0 / 0 = NaN for a class without images, on purpose.
        class_accuracy = correct / images
        class_removed_accuracy = removed_correct / images
        return FilterImportance(
            layer=layer, num_samples=int(total), accuracy=float(accuracy), removed_accuracy=removed_accuracy,
            car=accuracy - removed_accuracy, class_counts=images.long(), class_accuracy=class_accuracy,
            class_removed_accuracy=class_removed_accuracy, class_car=class_accuracy - class_removed_accuracy,
        )


def _unpack(batch, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch)):
        raise TypeError(f"data must yield (images, labels) batches of tensors; batch {index} is "
                        f"{type(batch).__name__}")
    images, labels = batch
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"data: the labels of batch {index} must be integer class indices of shape (B,) = "
                         f"({images.shape[0]},), got {labels.dtype} of shape {list(labels.shape)}")
    return images, labels


def _check_labels(labels: torch.Tensor, num_classes: int, index: int) -> None:
    low, high = int(labels.min()), int(labels.max())  # one read per batch: an evaluation, not a training step
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"data: labels must be class indices in [0, {num_classes}) for a model of "
                         f"{num_classes} classes; batch {index} has the label {bad}")


def _removal_masks(num_filters: int, start: int, stop: int, dtype, device) -> torch.Tensor:
    """(stop - start, K): row j keeps every filter but start + j."""
    masks = torch.ones(stop - start, num_filters, dtype=dtype, device=device)
    rows = torch.arange(stop - start, device=device)
    masks[rows, rows + start] = 0
    return masks


def _has_pooled_linear_head(model: nn.Module) -> bool:
    """The package's default head (PICNNHead, CSGHead): `pools` (global average pooling over the positions of
    the filters on `channel_dim`) and a Linear classifier."""
    head = getattr(model, "head", None)
    return getattr(head, "pools", False) is True and isinstance(getattr(head, "classifier", None), nn.Linear)


def check_interpreted_model(model: nn.Module, argument: str = "layer") -> None:
    if not (callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), nn.Module)):
        raise ValueError(f"{argument}=None means the model's interpreted layer, which needs model.features(images) "
                         f"and model.head (a PICNN-style model); {type(model).__name__} has not both: name the "
                         f"layer, e.g. {argument}='features.3'")


class _ClosedForm:
    """Interpreted layer + pooled Linear head: candidate logits = logits - a_i * W[:, i]."""

    def __init__(self, model):
        self.head = model.head
        self.model = model
        self.classifier = model.head.classifier

    def __call__(self, images) -> Tuple[torch.Tensor, Iterator]:
        a = global_pool(self.model.features(images), getattr(self.head, "channel_dim", 1))  # (B, K), as the heads pool
        weight = self.classifier.weight  # (C, K)
        if a.dim() != 2 or a.shape[1] != weight.shape[1]:
            raise ValueError(f"layer: the interpreted layer gives {a.shape[1] if a.dim() == 2 else list(a.shape)} "
                             f"filters but model.head.classifier expects in_features={weight.shape[1]}")
        logits = self.classifier(a)
        return logits, a.shape[1], self._candidates(a, logits, weight)

    @staticmethod
    def _candidates(a, logits, weight):
        batch, num_filters = a.shape
        chunk = max(1, CLOSED_FORM_CHUNK // max(1, batch * weight.shape[0]))
        for start in range(0, num_filters, chunk):
            stop = min(num_filters, start + chunk)
            candidates = logits[:, None, :] - a[:, start:stop, None] * weight[:, start:stop].t()[None]
            yield start, candidates.argmax(dim=2)


class _GatedFeatures:
    """Interpreted layer + any other head: the head runs on copies of A gated by the candidate masks."""

    def __init__(self, model, max_batch: int):
        self.model, self.head, self.max_batch = model, model.head, max_batch
        self.channel_dim = getattr(model.head, "channel_dim", 1)

    def __call__(self, images):
        A = self.model.features(images)
        logits = model_logits(self.head(A))
        return logits, A.shape[self.channel_dim], self._candidates(A)

    def _candidates(self, A):
        batch, num_filters = A.shape[0], A.shape[self.channel_dim]
        chunk = max(1, self.max_batch // max(1, batch))
        for start in range(0, num_filters, chunk):
            stop = min(num_filters, start + chunk)
            masks = _removal_masks(num_filters, start, stop, A.dtype, A.device).repeat_interleave(batch, dim=0)
            repeated = A.repeat(stop - start, *([1] * (A.dim() - 1)))
            gated, _ = ops.bernoulli_gate(repeated, masks, hard=False, channel_dim=self.channel_dim)
            candidates = model_logits(self.head(gated)).view(stop - start, batch, -1)
            yield start, candidates.argmax(dim=2).t()


class _LayerHook:
    """A named layer: a forward hook gates its channels with a chunk of candidate masks per forward pass.

    The network before the layer computes the same for every candidate, so by default it runs once per
    batch and the hook repeats the layer's output over the chunk's candidates before gating ("expand").
    That is right only if nothing after the layer reads a tensor computed before it (a residual
    connection). So on the first batch of two or more images, the first chunk is also computed with the
    images themselves repeated ("repeat", right for any network); if the two disagree, or expanding
    fails, every chunk is computed that way.
    """

    def __init__(self, model, group: ChannelGroup, max_batch: int):
        self.model, self.group, self.max_batch = model, group, max_batch
        self.gate_module = named_module(model, group.gate_name)
        self.masks: Optional[torch.Tensor] = None
        self.copies = 1
        self.expand: Optional[bool] = None  # decided on the first batch of two or more images

    def _gate(self, module, inputs, output):
        if self.masks is None:
            return None
        if output.shape[self.group.channel_dim] != self.masks.shape[1]:
            raise ValueError(f"layer {self.group.name!r}: {self.group.gate_name!r} outputs "
                             f"{output.shape[self.group.channel_dim]} channels, expected {self.masks.shape[1]}")
        if self.copies > 1:
            output = output.repeat(self.copies, *([1] * (output.dim() - 1)))
        gated, _ = ops.bernoulli_gate(output, self.masks.to(output.dtype), hard=False,
                                      channel_dim=self.group.channel_dim)
        return gated

    def __call__(self, images):
        logits = model_logits(self.model(images))
        return logits, self.group.num_filters, self._candidates(images)

    def _chunk_logits(self, images, masks, expand: bool) -> torch.Tensor:
        copies = masks.shape[0]
        self.masks = masks.repeat_interleave(images.shape[0], dim=0)
        self.copies = copies if expand else 1
        inputs = images if expand else images.repeat(copies, *([1] * (images.dim() - 1)))
        try:
            return model_logits(self.model(inputs))
        finally:
            self.masks, self.copies = None, 1

    def _decide(self, images, masks) -> torch.Tensor:
        reference = self._chunk_logits(images, masks, expand=False)
        try:
            expanded = self._chunk_logits(images, masks, expand=True)
        except RuntimeError:
            self.expand = False
            return reference
        tolerance = 1e3 * torch.finfo(reference.dtype).eps * max(1.0, float(reference.abs().max()))
        self.expand = expanded.shape == reference.shape and bool(torch.allclose(expanded, reference, rtol=0,
                                                                                 atol=tolerance))
        return reference

    def _candidates(self, images):
        batch, num_filters = images.shape[0], self.group.num_filters
        chunk = max(1, self.max_batch // max(1, batch))
        handle = self.gate_module.register_forward_hook(self._gate)
        try:
            for start in range(0, num_filters, chunk):
                stop = min(num_filters, start + chunk)
                masks = _removal_masks(num_filters, start, stop, torch.float32, images.device)
                if self.expand is None and batch >= 2:
                    logits = self._decide(images, masks)
                else:
                    logits = self._chunk_logits(images, masks, expand=bool(self.expand))
                yield start, logits.view(stop - start, batch, -1).argmax(dim=2).t()
        finally:
            handle.remove()


def _scorer(model, layer, images, max_batch):
    if layer is None:
        check_interpreted_model(model)
        return _ClosedForm(model) if _has_pooled_linear_head(model) else _GatedFeatures(model, max_batch)
    group = trace_group(model, layer, images[:8])
    return _LayerHook(model, group, max_batch)


def check_layer_argument(layer) -> None:
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be None (the interpreted layer) or a module name (str), got {type(layer).__name__}")


def check_max_batch(max_batch) -> None:
    if not (isinstance(max_batch, numbers.Integral) and not isinstance(max_batch, bool) and max_batch >= 1):
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")


@torch.no_grad()
def filter_importance(model: nn.Module, data: Iterable, layer: Optional[str] = None, *,
                      max_batch: int = DEFAULT_MAX_BATCH) -> FilterImportance:
    """CAR and class-wise CAR of every filter of ``layer``, in one pass over ``data``.

    Args:
        model: a PICNN-style model (``model.features(images)`` gives the interpreted layer's output ``A``,
            ``model.head(A).logits`` the logits), or with ``layer`` given any classifier whose forward
            returns logits (B, C) (or an object with a ``logits`` field). It is evaluated in eval mode and
            left in the mode it was in.
        data: an iterable of ``(images, labels)`` batches, e.g. a DataLoader; labels in [0, C).
        layer: None for the interpreted layer (the fast paths); else the name of a module of the model, as
            ``model.named_modules()`` gives it. For a conv or Linear, removing filter i zeroes channel i
            after the per-channel modules that follow it directly (BatchNorm, activation, pooling), which is
            what the network with that filter structurally removed computes; for any other module, channel
            i of its output.
        max_batch: images per forward pass when candidates are evaluated by repeating a batch (the gate
            paths): bounds their memory.
    """
    check_layer_argument(layer)
    check_max_batch(max_batch)
    device = model_device(model)
    was_training = model.training
    model.eval()
    scorer = counts = None
    try:
        for index, batch in enumerate(data):
            images, labels = _unpack(batch, index)
            if labels.numel() == 0:
                continue
            images, labels = images.to(device), labels.to(device=device, dtype=torch.long)
            if scorer is None:
                scorer = _scorer(model, layer, images, max_batch)
            logits, num_filters, candidates = scorer(images)
            _check_labels(labels, logits.shape[1], index)
            if counts is None:
                counts = _Counts(num_filters, logits.shape[1], device)
            counts.add(logits, labels)
            for start, predictions in candidates:
                counts.add_removed(start, predictions, labels)
    finally:
        model.train(was_training)
    if counts is None:
        raise ValueError("data holds no samples (an empty data set): CAR needs at least one labelled image")
    return counts.result("interpreted" if layer is None else layer)
