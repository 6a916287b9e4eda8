"""scikit-learn's handwritten digits: 1,797 real 8x8 grey images of the digits 0-9, shipped with
scikit-learn, so it needs no download and is the default data set."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .splits import DatasetSplits

# The split is fixed (not drawn from the run seed) so that runs with different seeds see the same data.
SPLIT_RANDOM_STATE = 0
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
IMAGE_SIZE = (8, 8)
MAX_PIXEL = 16.0  # load_digits stores pixel values as 0..16.


def load_digits() -> DatasetSplits:
    """The digits cut 60/20/20 into train/val/test, stratified by class, with a fixed random state.

    Pixels are scaled to [0, 1] and then standardised with the mean and standard deviation of the train
    pixels (one value each, the images having one channel). Images stay 8x8.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from error

    bunch = sklearn_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / MAX_PIXEL  # (N, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    indices = np.arange(len(labels))

    # Test first, then validation out of the rest, both stratified, so every class is in every split.
    rest, test = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=labels.numpy(), random_state=SPLIT_RANDOM_STATE
    )
    train, val = train_test_split(
        rest,
        test_size=VAL_FRACTION / (1.0 - TEST_FRACTION),
        stratify=labels.numpy()[rest],
        random_state=SPLIT_RANDOM_STATE,
    )

    mean = images[train].mean()
    std = images[train].std()
    normalised = (images - mean) / std

    def subset(split_indices) -> TensorDataset:
        split_indices = torch.as_tensor(split_indices)
        return TensorDataset(normalised[split_indices].contiguous(), labels[split_indices].contiguous())

    return DatasetSplits(
        train=subset(train),
        val=subset(val),
        test=subset(test),
        num_classes=10,
        in_channels=1,
        image_size=IMAGE_SIZE,
        class_names=[str(digit) for digit in range(10)],
        name="digits",
        pixel_mean=(float(mean),),
        pixel_std=(float(std),),
    )
