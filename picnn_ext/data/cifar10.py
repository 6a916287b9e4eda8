"""CIFAR-10 from the extracted python batches (``cifar-10-batches-py``) in a local folder; no download.

The batches are pickled dicts: ``b'data'`` a uint8 array (N, 3072) holding each image as its red, green
and blue 32x32 planes in turn, ``b'labels'`` a list of N ints; ``batches.meta`` holds ``b'label_names'``.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import DatasetSplits

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
FOLDER_NAME = "cifar-10-batches-py"
IMAGE_SIZE = (32, 32)
# Per-channel statistics of the CIFAR-10 train images, the usual normalisation for this data set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The validation images are a fixed draw from the train batches, the same on every run.
VAL_SPLIT_SEED = 0


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches hold (dicts, lists, bytes, ints and numpy arrays), so that a
    stray or tampered file in the folder cannot run code when it is loaded."""

    ALLOWED = {
        ("_codecs", "encode"),  # bytes, as pickle protocol 2 writes them
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # arrays pickled by numpy < 2 (the published files)
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_pickle(path: str) -> Dict[bytes, Any]:
    try:
        with open(path, "rb") as file:
            # encoding="bytes": the published files were pickled by Python 2, whose str keys become bytes.
            content = _BatchUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"cifar10 data set: {path} is not a CIFAR-10 python batch: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"cifar10 data set: {path} is not a CIFAR-10 python batch (not a dict)")
    return content


def _read_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one batch file."""
    batch = _read_pickle(path)
    if b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"cifar10 data set: {path} lacks b'data' or b'labels'")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    height, width = IMAGE_SIZE
    if data.ndim != 2 or data.shape[1] != 3 * height * width or len(data) != len(labels):
        raise ValueError(
            f"cifar10 data set: {path} holds data of shape {data.shape} and {len(labels)} labels; "
            f"expected (N, {3 * height * width}) and N labels"
        )
    return data.reshape(-1, 3, height, width), labels


def _read_class_names(path: str) -> List[str]:
    names = _read_pickle(path).get(b"label_names")
    if names is None:
        raise ValueError(f"cifar10 data set: {path} lacks b'label_names'")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def _resolve_folder(path: str) -> str:
    """The folder holding the batches: ``path`` itself, or its ``cifar-10-batches-py`` subfolder, so that
    the folder the archive was extracted into (torchvision's ``root``) works too."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"cifar10 data set: {path} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"cifar10 data set: {path} is not a directory")
    nested = os.path.join(path, FOLDER_NAME)
    if not os.path.exists(os.path.join(path, TEST_FILE)) and os.path.isdir(nested):
        return nested
    return path


class Uint8ImageDataset(Dataset):
    """Images kept as uint8 (N, C, H, W) and normalised per item: CIFAR-10's 60,000 images take 180 MB
    this way, four times that as float32."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 255.0
        return (image - self.mean) / self.std, self.labels[index]


def load_cifar10(path: str, val_size: int = 5000) -> DatasetSplits:
    """CIFAR-10 from the python batches in ``path``.

    Train is ``data_batch_1`` to ``data_batch_5`` less ``val_size`` images drawn with a fixed seed (the
    validation set); test is ``test_batch``. Images are normalised with the standard CIFAR-10 mean and
    std. The batches are pickles; only plain data and numpy arrays are unpickled.
    """
    folder = _resolve_folder(path)
    needed = (*TRAIN_FILES, TEST_FILE, META_FILE)
    missing = [name for name in needed if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(
            f"cifar10 data set: {folder} is missing {', '.join(missing)} "
            f"(expected the extracted python version of CIFAR-10, {FOLDER_NAME}: {', '.join(needed)})"
        )

    train_parts = [_read_batch(os.path.join(folder, name)) for name in TRAIN_FILES]
    train_images = np.concatenate([images for images, _ in train_parts])
    train_labels = np.concatenate([labels for _, labels in train_parts])
    test_images, test_labels = _read_batch(os.path.join(folder, TEST_FILE))
    class_names = _read_class_names(os.path.join(folder, META_FILE))

    num_classes = len(class_names)
    for file_labels, where in ((train_labels, "the train batches"), (test_labels, TEST_FILE)):
        if len(file_labels) and (file_labels.min() < 0 or file_labels.max() >= num_classes):
            raise ValueError(
                f"cifar10 data set: {where} hold labels outside [0, {num_classes}) "
                f"({META_FILE} names {num_classes} classes)"
            )
    if not 0 < val_size < len(train_labels):
        raise ValueError(
            f"cifar10 data set: val_size must be between 1 and {len(train_labels) - 1} "
            f"(the train batches hold {len(train_labels)} images), got {val_size}"
        )

    order = np.random.default_rng(VAL_SPLIT_SEED).permutation(len(train_labels))
    val_indices, train_indices = np.sort(order[:val_size]), np.sort(order[val_size:])

    def dataset(images: np.ndarray, labels: np.ndarray) -> Uint8ImageDataset:
        return Uint8ImageDataset(
            torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), CIFAR10_MEAN, CIFAR10_STD
        )

    return DatasetSplits(
        train=dataset(train_images[train_indices], train_labels[train_indices]),
        val=dataset(train_images[val_indices], train_labels[val_indices]),
        test=dataset(test_images, test_labels),
        num_classes=num_classes,
        in_channels=3,
        image_size=IMAGE_SIZE,
        class_names=class_names,
        name="cifar10",
        pixel_mean=tuple(float(value) for value in CIFAR10_MEAN),
        pixel_std=tuple(float(value) for value in CIFAR10_STD),
    )
