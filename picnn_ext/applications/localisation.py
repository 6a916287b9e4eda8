"""Object localisation from a class's filters, scored against ground-truth object masks.

For each test image and its predicted class c, three maps, each resized to the image and binarised by
keeping its top ``keep`` share of pixels (30% by default), then compared with the object mask by IoU:

- activation map: the class's filters' maps A_k weighted by the class-filter weights W[c] (see
  :mod:`.class_filters`) and averaged, upsampled bilinearly;
- gradient map: the gradient of the same filters' mean activation sum_k W[c, k] GAP(A_k) / sum_k W[c, k]
  with respect to the raw image, L2 over the colour channels, Gaussian-blurred (pixel gradients are
  speckled; the blur turns them into a region);
- Grad-CAM of the predicted class at the interpreted layer (:mod:`.gradcam`), the usual baseline.

Per map: the mean IoU and the hit share, the share of images whose IoU reaches a threshold (0.3 for the
activation map and Grad-CAM, 0.2 for the sparser gradient map).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .class_filters import ClassFilters
from .gradcam import grad_cam
from .network import RawPixelNet

__all__ = ["HIT_THRESHOLDS", "KEEP_FRACTION", "LocalisationResult", "activation_maps", "gaussian_blur",
           "gradient_maps", "iou", "keep_top", "localise"]

KEEP_FRACTION = 0.3
HIT_THRESHOLDS: Dict[str, float] = {"activation": 0.3, "gradient": 0.2, "gradcam": 0.3}
# The gradient map's blur, as a share of the image side (2 pixels for 32x32 images).
BLUR_SIGMA_FRACTION = 1.0 / 16.0
BATCH_SIZE = 128


def keep_top(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool (B, H, W): each map's top ``fraction`` of pixels.

    A pixel is kept when it reaches the value of the ceil(fraction * H * W)-th largest pixel and is above
    the map's minimum: a flat region at the minimum (a ReLU's zeros) is never picked at random, and a
    constant map keeps nothing.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"keep_top: fraction must be in (0, 1], got {fraction}")
    if maps.dim() != 3:
        raise ValueError(f"keep_top: maps must be (B, H, W), got shape {tuple(maps.shape)}")
    flat = maps.flatten(1)
    count = max(1, math.ceil(fraction * flat.shape[1]))
    threshold = flat.topk(count, dim=1).values[:, -1:]
    kept = (flat >= threshold) & (flat > flat.min(dim=1, keepdim=True).values)
    return kept.view_as(maps)


def iou(kept: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) intersection over union of two bool (B, H, W) regions; 1 where both are empty."""
    if kept.shape != masks.shape:
        raise ValueError(f"iou: the maps {tuple(kept.shape)} and the masks {tuple(masks.shape)} differ in shape")
    kept, masks = kept.bool().flatten(1), masks.bool().flatten(1)
    intersection = (kept & masks).sum(dim=1).double()
    union = (kept | masks).sum(dim=1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1.0), torch.ones_like(union))


def _resize(maps: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def activation_maps(A: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, h, w): the maps of A (B, K, h, w) averaged with each image's filter weights (B, K)."""
    total = weights.sum(dim=1).clamp(min=1e-12)
    return torch.einsum("bkhw,bk->bhw", A, weights) / total[:, None, None]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) maps blurred by a Gaussian of ``sigma`` pixels (separable, reflected borders)."""
    if sigma <= 0:
        return maps
    radius = max(1, min(int(math.ceil(3 * sigma)), min(maps.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def gradient_maps(net: RawPixelNet, raw: torch.Tensor, weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W): |d (weighted mean activation of the filters) / d raw image|, L2 over channels, blurred."""
    with torch.enable_grad():
        raw = raw.detach().requires_grad_(True)
        a = net.features(raw).mean(dim=(2, 3))  # (B, K)
        # Images do not interact in eval mode, so the gradient of the sum is each image's own.
        score = ((a * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-12)).sum()
        (gradient,) = torch.autograd.grad(score, raw)
    return gaussian_blur(gradient.norm(dim=1), sigma)


@dataclass
class LocalisationResult:
    ious: Dict[str, np.ndarray]             # map name -> (N,) IoU of each test image
    predicted: np.ndarray                   # (N,) the class whose filters were read
    keep: float
    examples: Dict[str, np.ndarray] = field(default_factory=dict)  # the first images, masks and maps

    def summary(self) -> Dict[str, Dict[str, float]]:
        return {name: {"iou": float(values.mean()),
                       "hit_share": float((values >= HIT_THRESHOLDS[name]).mean()),
                       "hit_threshold": HIT_THRESHOLDS[name]}
                for name, values in self.ious.items()}


def localise(net: RawPixelNet, filters: ClassFilters, dataset: Dataset, masks: torch.Tensor, *,
             keep: float = KEEP_FRACTION, num_examples: int = 0, batch_size: int = BATCH_SIZE,
             limit: Optional[int] = None) -> LocalisationResult:
    """IoU of the three maps with ``masks`` (N, H, W) for every image of ``dataset`` (its first ``limit``)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1] (the share of pixels kept), got {keep}")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if masks.shape[0] < count:
        raise ValueError(f"localise: {masks.shape[0]} object masks for {count} images")
    ious = {name: [] for name in HIT_THRESHOLDS}
    predicted_all, examples = [], {name: [] for name in ("images", "masks", *HIT_THRESHOLDS)}
    seen = 0
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if seen >= count:
            break
        images = images[: count - seen].to(net.device)
        batch_masks = masks[seen: seen + len(images)].to(net.device)
        raw = net.splits.to_raw(images)
        size = raw.shape[-2:]
        with torch.no_grad():
            A = net.features(raw)
            predicted = net.logits_from_features(A).argmax(dim=1)
        weights = filters.weights[predicted]  # (B, K)
        maps = {
            "activation": _resize(activation_maps(A, weights), size),
            "gradient": gradient_maps(net, raw, weights, BLUR_SIGMA_FRACTION * min(size)),
            "gradcam": _resize(grad_cam(A, net.logits_from_features, predicted), size),
        }
        for name, values in maps.items():
            ious[name].append(iou(keep_top(values.detach(), keep), batch_masks).cpu())
        predicted_all.append(predicted.cpu())
        if seen < num_examples:
            take = num_examples - seen
            examples["images"].append(raw[:take].cpu())
            examples["masks"].append(batch_masks[:take].cpu())
            for name, values in maps.items():
                examples[name].append(values[:take].detach().cpu())
        seen += len(images)
    if seen == 0:
        raise ValueError("localise: no test images")
    return LocalisationResult(
        ious={name: torch.cat(values).numpy() for name, values in ious.items()},
        predicted=torch.cat(predicted_all).numpy(), keep=keep,
        examples={name: torch.cat(values).numpy() for name, values in examples.items() if values},
    )
