"""What every data set loader returns: :class:`DatasetSplits`.

Its own module, so that the loaders and the registry that picks among them both import it and neither
imports the other at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["DatasetSplits"]


@dataclass
class DatasetSplits:
    """A data set cut into train, validation and test sets, and what a model needs to know about it.

    Each split yields ``(image, label)``: ``image`` a float32 tensor ``(C, H, W)``, already normalised,
    ``label`` an int64 scalar tensor in ``[0, num_classes)``.

    The normalisation is ``image = (raw - pixel_mean) / pixel_std`` per channel (one value, or one per
    channel), and ``pixel_range`` is the box that raw pixels live in (None: unbounded). Attacks perturb and
    clamp in raw pixel space through these (an epsilon of 8/255 means 8 grey levels of a [0, 1] image);
    the defaults say the images are raw pixels in [0, 1].
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: Tuple[int, int]
    class_names: List[str]
    name: str
    # Ground-truth object of each test image, bool (N_test, H, W); None where the data set has none.
    test_object_masks: Optional[torch.Tensor] = None
    pixel_mean: Tuple[float, ...] = (0.0,)
    pixel_std: Tuple[float, ...] = (1.0,)
    pixel_range: Optional[Tuple[float, float]] = (0.0, 1.0)

    def to_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) back to raw pixels."""
        mean, std = self._stats(images)
        return images * std + mean

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw pixels (B, C, H, W) to what the model reads."""
        mean, std = self._stats(raw)
        return (raw - mean) / std

    def _stats(self, images: torch.Tensor):
        def column(values) -> torch.Tensor:
            return torch.as_tensor(values, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)

        return column(self.pixel_mean), column(self.pixel_std)
