"""Image size and augmentation for training on any data set.

- :func:`resize_splits`: every image of every split resized to ``size x size`` (bilinear, as torchvision's
  ``Resize``), the object masks too (nearest), so that a network made for 224-pixel images trains on
  CIFAR-10's 32-pixel ones, as the PICNN authors did.
- :func:`augment_batch`: the usual CIFAR augmentation, drawn per sample on the batch's device from a given
  generator (so a checkpoint that holds the generator resumes it exactly): a random crop of the image
  padded by ``size / 8`` on each side, a horizontal flip with probability 1/2, and colour jitter
  (brightness, contrast, saturation, each a factor drawn from [1 - 0.4, 1 + 0.4], as torchvision's
  ``ColorJitter(0.4, 0.4, 0.4)``, in that fixed order), applied to the pixels, not to the normalised values.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .splits import DatasetSplits

__all__ = ["JITTER", "ResizedDataset", "augment_batch", "colour_jitter", "resize_splits"]

JITTER = 0.4


class ResizedDataset(Dataset):
    """``dataset``'s items with the image resized to ``size`` (H, W)."""

    def __init__(self, dataset: Dataset, size: Tuple[int, int]):
        self.dataset = dataset
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return image, label


def resize_splits(splits: DatasetSplits, size: Optional[int]) -> DatasetSplits:
    """The splits with ``size x size`` images; ``splits`` itself when ``size`` is None or already theirs."""
    if size is None or tuple(splits.image_size) == (size, size):
        return splits
    if size < 1:
        raise ValueError(f"image_size must be at least 1, got {size}")
    shape = (size, size)
    masks = splits.test_object_masks
    if masks is not None:
        masks = F.interpolate(masks[:, None].float(), size=shape, mode="nearest")[:, 0] > 0.5
    return dataclasses.replace(
        splits, train=ResizedDataset(splits.train, shape), val=ResizedDataset(splits.val, shape),
        test=ResizedDataset(splits.test, shape), image_size=shape, test_object_masks=masks,
    )


def _grey(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance of RGB pixels with torchvision's rgb_to_grayscale weights; grey images as they are."""
    if pixels.shape[1] != 3:
        return pixels.mean(1, keepdim=True)
    weights = torch.tensor([0.2989, 0.587, 0.114], dtype=pixels.dtype, device=pixels.device)
    return (pixels * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def colour_jitter(pixels: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation factors (B,) applied in this order to ``pixels``
    (B, C, H, W), as torchvision's adjust_brightness, adjust_contrast and adjust_saturation do to float
    images (each a blend, clamped to [0, 1] when ``clamp``)."""
    def blend(image, other, ratio):
        out = ratio.view(-1, 1, 1, 1) * image + (1 - ratio.view(-1, 1, 1, 1)) * other
        return out.clamp(0, 1) if clamp else out

    pixels = blend(pixels, torch.zeros_like(pixels), brightness)
    pixels = blend(pixels, _grey(pixels).mean((1, 2, 3), keepdim=True), contrast)
    return blend(pixels, _grey(pixels), saturation)


def augment_batch(images: torch.Tensor, generator: torch.Generator, *, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, jitter: float = JITTER, clamp: bool = True) -> torch.Tensor:
    """A randomly cropped, flipped and colour-jittered copy of ``images`` (B, C, H, W), normalised with
    ``mean`` and ``std`` (per channel, or one value for all); every draw comes from ``generator``. ``clamp``
    keeps the jittered pixels in [0, 1] (off for data whose raw pixels leave it, such as the noisy shapes)."""
    if images.dim() != 4:
        raise ValueError(f"augment_batch: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    device = images.device
    if batch == 0:
        return images

    # Random crop: pad by size / 8 (the 4 pixels of CIFAR's 32), take an H x W window at a random offset.
    pad = max(1, min(height, width) // 8)
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros: the mean colour in normalised values
    top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)
    left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)
    rows = (top[:, None] + torch.arange(height, device=device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(width, device=device))[:, None, None, :]
    samples = torch.arange(batch, device=device)[:, None, None, None]
    out = padded[samples, torch.arange(channels, device=device)[None, :, None, None], rows, cols]

    flip = torch.rand(batch, generator=generator, device=device) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)

    if jitter > 0:
        shift = torch.as_tensor(0.0 if mean is None else mean, dtype=out.dtype, device=device).reshape(1, -1, 1, 1)
        scale = torch.as_tensor(1.0 if std is None else std, dtype=out.dtype, device=device).reshape(1, -1, 1, 1)
        factors = 1 - jitter + 2 * jitter * torch.rand(3, batch, generator=generator, device=device)
        # Pixels of a known normalisation lie in [0, 1], and are kept there as torchvision keeps them.
        pixels = colour_jitter(out * scale + shift, *factors.to(out.dtype), clamp=clamp and mean is not None)
        out = (pixels - shift) / scale
    return out
