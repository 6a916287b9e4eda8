"""A folder of images with one subfolder per class (the layout of torchvision's ``ImageFolder``).

Images are read with Pillow when an item is asked for, so a large folder costs only its file list in
memory. Pillow is an optional dependency (``pip install pillow``).
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import DatasetSplits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Images are normalised with the ImageNet statistics, as torchvision's pretrained models expect: the
# images are only read one at a time, so the train statistics are not at hand.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The split is fixed (not drawn from the run seed) so that runs with different seeds see the same data.
SPLIT_SEED = 0


def _require_pillow():
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "the 'folder:' data set reads images with Pillow, which is not installed: "
            "pip install pillow (or picnn_ext[images])"
        ) from error
    return Image


class ImageFolderDataset(Dataset):
    """Images read from ``paths`` on demand, resized to ``image_size`` (H, W), as RGB, normalised."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        image_size: Tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        Image = _require_pillow()
        path = self.paths[index]
        height, width = self.image_size
        try:
            with Image.open(path) as image:
                # Resize to the exact size, aspect ratio not kept, as torchvision's Resize((H, W)) does.
                pixels = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))
        except OSError as error:
            raise OSError(f"cannot read image {path}: {error}") from error
        image_tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0
        return (image_tensor - self.mean) / self.std, self.labels[index]


def _find_images(folder: str) -> List[str]:
    """Image files under ``folder`` (subfolders included, hidden ones skipped), sorted."""
    found = []
    for root, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found.extend(
            os.path.join(root, name)
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


def _split_per_class(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test, cut class by class so each split has each class's share.

    Each class keeps at least one train image; its val and test shares are rounded, so a class with very
    few images may have none in val or test.
    """
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(int(round(test_fraction * len(members))), len(members) - 1)
        n_val = min(int(round(val_fraction * len(members))), len(members) - 1 - n_test)
        test.extend(members[:n_test])
        val.extend(members[n_test : n_test + n_val])
        train.extend(members[n_test + n_val :])
    return tuple(np.sort(np.asarray(split, dtype=np.int64)) for split in (train, val, test))


def load_image_folder(
    path: str,
    image_size: Union[int, Tuple[int, int]] = 64,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> DatasetSplits:
    """The images under ``path``, one subfolder per class; class names are the sorted subfolder names.

    Every image is resized to ``image_size`` (an int for a square, or (H, W)), converted to RGB and
    normalised with the ImageNet mean and std. Each class is cut into train/val/test by the given
    fractions with a fixed seed, so the split is the same on every run.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"folder data set: {path} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"folder data set: {path} is not a directory")
    # The images are read later, one by one; checking for Pillow now makes a missing Pillow fail here
    # rather than at the first batch.
    _require_pillow()
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(side) for side in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"folder data set: image_size must be a positive int or (H, W), got {image_size}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"folder data set: val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be "
            "in [0, 1) and sum to less than 1"
        )

    class_names = sorted(
        entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith(".")
    )
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise ValueError(
            f"folder data set: {path} needs at least two class folders, one subfolder per class (found {found})"
        )

    paths: List[str] = []
    labels: List[int] = []
    for label, class_name in enumerate(class_names):
        images = _find_images(os.path.join(path, class_name))
        if not images:
            raise ValueError(
                f"folder data set: folder {os.path.join(path, class_name)} has no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        paths.extend(images)
        labels.extend([label] * len(images))

    train, val, test = _split_per_class(np.asarray(labels), val_fraction, test_fraction, SPLIT_SEED)

    def subset(indices: np.ndarray) -> ImageFolderDataset:
        return ImageFolderDataset([paths[i] for i in indices], [labels[i] for i in indices], image_size)

    return DatasetSplits(
        train=subset(train),
        val=subset(val),
        test=subset(test),
        num_classes=len(class_names),
        in_channels=3,
        image_size=image_size,
        class_names=class_names,
        name=f"folder:{os.path.basename(os.path.normpath(path))}",
        pixel_mean=tuple(float(value) for value in IMAGENET_MEAN),
        pixel_std=tuple(float(value) for value in IMAGENET_STD),
    )
