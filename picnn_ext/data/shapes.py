"""Synthetic shapes: one bright shape per image on a noisy background, its class the kind of shape.

Each image comes with the mask of its shape, so a saliency map or a filter's activation map can be scored
against where the object really is (the data sets on disk have no such ground truth).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .splits import DatasetSplits

# The images are generated from this seed, not the run seed, so every run sees the same data.
SHAPES_SEED = 20240501

# Sizes relative to the image side: a shape's half-extent is drawn from [MIN, MAX] * side.
MIN_HALF_EXTENT = 0.18
MAX_HALF_EXTENT = 0.35
# Grey levels: the background level, the shape's level and the noise are drawn per image, with the shape
# always brighter than the background, so the class is in the outline and not in the brightness.
BACKGROUND_LEVEL = (0.0, 0.3)
SHAPE_LEVEL = (0.6, 1.0)
NOISE_STD = 0.15
# Thickness of bars, cross arms and the ring, as a fraction of the half-extent.
THICKNESS = 0.3

# Each shape as a test on pixel offsets (dx, dy) from its centre (y pointing down) and half-extent r, all
# broadcastable arrays; every shape fits in the square |dx|, |dy| <= r, so a centre at least r from each
# border keeps it whole.
ShapeTest = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
SHAPES: Dict[str, ShapeTest] = {
    "circle": lambda dx, dy, r: dx**2 + dy**2 <= r**2,
    # 0.8 r gives a square of about the same area as the circle.
    "square": lambda dx, dy, r: np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r,
    # Apex up at dy = -r, base down at dy = r, widening by one pixel per two rows.
    "triangle": lambda dx, dy, r: (dy <= r) & (np.abs(dx) <= (dy + r) / 2),
    "cross": lambda dx, dy, r: ((np.abs(dx) <= THICKNESS * r) & (np.abs(dy) <= r))
    | ((np.abs(dy) <= THICKNESS * r) & (np.abs(dx) <= r)),
    "ring": lambda dx, dy, r: (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= ((1 - THICKNESS) * r) ** 2),
    "horizontal_bar": lambda dx, dy, r: (np.abs(dx) <= r) & (np.abs(dy) <= THICKNESS * r),
    "vertical_bar": lambda dx, dy, r: (np.abs(dy) <= r) & (np.abs(dx) <= THICKNESS * r),
    "diamond": lambda dx, dy, r: np.abs(dx) + np.abs(dy) <= r,
}
CLASS_NAMES = list(SHAPES)


def generate_shapes(
    num_images: int, image_size: int, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``num_images`` images, balanced over the classes, from ``rng``.

    Returns ``images`` float32 ``(N, 1, S, S)`` (not normalised), ``labels`` int64 ``(N,)`` and ``masks``
    bool ``(N, S, S)``, True on the pixels of each image's shape.
    """
    size = image_size
    # Balanced classes in a random order.
    labels = rng.permutation(np.arange(num_images) % len(CLASS_NAMES)).astype(np.int64)
    half_extent = rng.uniform(MIN_HALF_EXTENT * size, MAX_HALF_EXTENT * size, num_images)
    centre_x = rng.uniform(half_extent, size - half_extent)
    centre_y = rng.uniform(half_extent, size - half_extent)

    # Offsets of the pixel centres from the shape centre, (N, S, S) via broadcasting.
    coords = np.arange(size) + 0.5
    dx = coords[None, None, :] - centre_x[:, None, None]
    dy = coords[None, :, None] - centre_y[:, None, None]
    r = half_extent[:, None, None]

    masks = np.zeros((num_images, size, size), dtype=bool)
    for label, inside in enumerate(SHAPES.values()):
        chosen = labels == label
        masks[chosen] = inside(dx[chosen], dy[chosen], r[chosen])

    background = rng.uniform(*BACKGROUND_LEVEL, num_images)[:, None, None]
    foreground = rng.uniform(*SHAPE_LEVEL, num_images)[:, None, None]
    noise = rng.normal(0.0, NOISE_STD, (num_images, size, size))
    images = np.where(masks, foreground, background) + noise
    return images[:, None].astype(np.float32), labels, masks


def load_shapes(
    n_train: int = 3000, n_val: int = 600, n_test: int = 600, image_size: int = 32
) -> DatasetSplits:
    """Eight classes of shapes, one channel, ``image_size`` x ``image_size`` pixels.

    The data are fixed: each split has its own random stream derived from :data:`SHAPES_SEED`, so the
    test set does not change when ``n_train`` does, and the run seed has no effect. Images are
    standardised with the mean and standard deviation of the train pixels. ``test_object_masks`` holds
    the mask of each test image's shape.
    """
    for name, count in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if count < 1:
            raise ValueError(f"shapes: {name} must be at least 1, got {count}")
    if image_size < 8:
        raise ValueError(f"shapes: image_size must be at least 8 pixels, got {image_size}")

    train_rng, val_rng, test_rng = (
        np.random.default_rng(stream) for stream in np.random.SeedSequence(SHAPES_SEED).spawn(3)
    )
    train_images, train_labels, _ = generate_shapes(n_train, image_size, train_rng)
    val_images, val_labels, _ = generate_shapes(n_val, image_size, val_rng)
    test_images, test_labels, test_masks = generate_shapes(n_test, image_size, test_rng)

    mean = float(train_images.mean())
    std = float(train_images.std())

    def dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy((images - mean) / std), torch.from_numpy(labels))

    return DatasetSplits(
        train=dataset(train_images, train_labels),
        val=dataset(val_images, val_labels),
        test=dataset(test_images, test_labels),
        num_classes=len(CLASS_NAMES),
        in_channels=1,
        image_size=(image_size, image_size),
        class_names=list(CLASS_NAMES),
        name="shapes",
        test_object_masks=torch.from_numpy(test_masks),
        pixel_mean=(mean,),
        pixel_std=(std,),
        # The generator's Gaussian noise takes raw pixels outside [0, 1]: no box to clamp to.
        pixel_range=None,
    )
