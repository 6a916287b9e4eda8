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
