"""Tests of picnn_ext.data: the spec string, and each data set's splits, contents and error messages."""

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from picnn_ext.data import DatasetSplits, load_dataset, parse_dataset_spec


def stack(dataset):
    """All items of a data set as (images, labels) tensors."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.stack(labels)


def check_item_types(splits: DatasetSplits):
    for split in (splits.train, splits.val, splits.test):
        image, label = split[0]
        assert image.dtype == torch.float32
        assert image.shape == (splits.in_channels, *splits.image_size)
        assert label.dtype == torch.int64 and label.dim() == 0
    assert len(splits.class_names) == splits.num_classes


# ----------------------------------------------------------------------------------------------------------
# The spec string


def test_spec_parsing():
    assert parse_dataset_spec("digits") == ("digits", None)
    assert parse_dataset_spec(" Shapes ") == ("shapes", None)
    assert parse_dataset_spec("folder:/data/pets") == ("folder", "/data/pets")
    # Only the first colon separates the name from the path.
    assert parse_dataset_spec("cifar10:/data/a:b") == ("cifar10", "/data/a:b")
    assert parse_dataset_spec("folder:~/pets") == ("folder", os.path.expanduser("~/pets"))


@pytest.mark.parametrize(
    "spec, words",
    [
        ("mnist", ["mnist", "digits", "shapes", "folder:PATH", "cifar10:PATH"]),
        ("", ["empty"]),
        ("folder:", ["needs a path"]),
        ("cifar10:  ", ["needs a path"]),
        ("digits:/somewhere", ["takes no path"]),
    ],
)
def test_bad_spec_is_named(spec, words):
    with pytest.raises(ValueError) as caught:
        load_dataset(spec)
    for word in words:
        assert word in str(caught.value)


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError):
        load_dataset("shapes", colour=True)


# ----------------------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_splits(digits):
    check_item_types(digits)
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, (8, 8))
    assert digits.class_names == [str(d) for d in range(10)] and digits.name == "digits"
    assert digits.test_object_masks is None
    sizes = [len(split) for split in (digits.train, digits.val, digits.test)]
    assert sum(sizes) == 1797
    assert sizes == [1077, 360, 360]  # 60/20/20
    for split in (digits.train, digits.val, digits.test):
        assert set(split.tensors[1].tolist()) == set(range(10))
    # Normalised with the train statistics.
    train_images = digits.train.tensors[0]
    assert abs(train_images.mean().item()) < 1e-4 and abs(train_images.std().item() - 1) < 1e-4


def test_digits_split_is_fixed(digits):
    for other in (load_dataset("digits", seed=0), load_dataset("digits", seed=123)):
        for ours, theirs in zip((digits.train, digits.val, digits.test), (other.train, other.val, other.test)):
            assert torch.equal(ours.tensors[0], theirs.tensors[0])
            assert torch.equal(ours.tensors[1], theirs.tensors[1])


def test_digits_splits_partition_the_data_set(digits):
    """Train, val and test together hold each of the 1,797 images exactly once."""
    from sklearn.datasets import load_digits

    images = torch.cat([split.tensors[0] for split in (digits.train, digits.val, digits.test)])
    labels = torch.cat([split.tensors[1] for split in (digits.train, digits.val, digits.test)])
    # Undo the affine normalisation: pixel 0 and pixel 16 both occur, at the minimum and the maximum.
    raw = (images - images.min()) / (images.max() - images.min()) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-3)
    rows = np.concatenate([raw.round().reshape(len(raw), -1).numpy(), labels[:, None].numpy()], axis=1)
    bunch = load_digits()
    expected = np.concatenate([bunch.data, bunch.target[:, None]], axis=1)
    assert np.array_equal(np.unique(rows, axis=0), np.unique(expected, axis=0))
    assert len(np.unique(rows, axis=0)) == len(rows)  # no image in two splits (the set has no duplicates)


# ----------------------------------------------------------------------------------------------------------
# shapes


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes", seed=0)


def test_shapes_splits(shapes):
    check_item_types(shapes)
    assert [len(s) for s in (shapes.train, shapes.val, shapes.test)] == [3000, 600, 600]
    assert (shapes.in_channels, shapes.image_size, shapes.name) == (1, (32, 32), "shapes")
    assert 6 <= shapes.num_classes <= 8
    for split in (shapes.train, shapes.val, shapes.test):
        counts = torch.bincount(split.tensors[1], minlength=shapes.num_classes)
        assert counts.min() > 0 and counts.max() - counts.min() <= 1  # balanced


def test_shapes_are_fixed(shapes):
    other = load_dataset("shapes", seed=7)
    for ours, theirs in zip((shapes.train, shapes.val, shapes.test), (other.train, other.val, other.test)):
        assert torch.equal(ours.tensors[0], theirs.tensors[0])
        assert torch.equal(ours.tensors[1], theirs.tensors[1])
    assert torch.equal(shapes.test_object_masks, other.test_object_masks)


def test_shapes_test_set_does_not_depend_on_train_size(shapes):
    small = load_dataset("shapes", n_train=40, n_val=8, n_test=600)
    assert len(small.train) == 40 and len(small.val) == 8
    assert torch.equal(small.test.tensors[1], shapes.test.tensors[1])
    assert torch.equal(small.test_object_masks, shapes.test_object_masks)


def test_shapes_masks_mark_the_object(shapes):
    masks = shapes.test_object_masks
    assert masks.dtype == torch.bool and masks.shape == (600, 32, 32)
    images = shapes.test.tensors[0][:, 0]
    inside = masks.float()
    area = inside.sum(dim=(1, 2))
    assert area.min() > 0 and (area < 32 * 32 / 2).all()  # an object in every image, never the whole image
    mean_inside = (images * inside).sum(dim=(1, 2)) / area
    mean_outside = (images * (1 - inside)).sum(dim=(1, 2)) / (32 * 32 - area)
    # The objects are brighter than the background in every image, by a wide margin.
    assert (mean_inside - mean_outside).min() > 1.0


def test_shapes_bad_sizes():
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("shapes", n_train=0)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("shapes", image_size=4)


# ----------------------------------------------------------------------------------------------------------
# folder:PATH


def write_image(path, colour, size=(10, 7), mode="RGB"):
    from PIL import Image

    Image.new(mode, size, colour).save(path)


@pytest.fixture
def image_folder(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "toys"
    # Class folders deliberately not in sorted order of creation; different sizes, modes and formats.
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("green", (0, 255, 0))):
        folder = root / name
        (folder / "nested").mkdir(parents=True)
        for i in range(8):
            write_image(folder / f"{i}.png", colour, size=(10 + i, 7))
        write_image(folder / "nested" / "a.JPG", colour)
        write_image(folder / "b.bmp", colour)
        (folder / "notes.txt").write_text("not an image")
        write_image(folder / ".hidden.png", (9, 9, 9))
    write_image(root / "blue" / "grey.png", 128, mode="L")
    return root


def test_folder_splits(image_folder):
    splits = load_dataset(f"folder:{image_folder}", image_size=16)
    check_item_types(splits)
    assert splits.class_names == ["blue", "green", "red"]
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (3, 3, (16, 16))
    assert splits.name == "folder:toys" and splits.test_object_masks is None
    all_paths = splits.train.paths + splits.val.paths + splits.test.paths
    assert len(all_paths) == len(set(all_paths)) == 3 * 10 + 1  # .txt and hidden files skipped
    for split in (splits.train, splits.val, splits.test):
        assert set(split.labels.tolist()) == {0, 1, 2}
    # A red image: channel 0 at its maximum, normalised with the ImageNet statistics.
    red = splits.class_names.index("red")
    index = splits.train.labels.tolist().index(red)
    image, label = splits.train[index]
    assert label.item() == red
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=0.05)


def test_folder_split_is_fixed(image_folder):
    first = load_dataset(f"folder:{image_folder}", seed=0)
    second = load_dataset(f"folder:{image_folder}", seed=5)
    assert first.image_size == (64, 64)
    for ours, theirs in zip((first.train, first.val, first.test), (second.train, second.val, second.test)):
        assert ours.paths == theirs.paths


def test_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'file.png'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="class folders"):
        load_dataset(f"folder:{empty}")
    (empty / "cats").mkdir()
    write_image(empty / "cats" / "0.png", (1, 2, 3))
    with pytest.raises(ValueError, match="at least two class folders"):
        load_dataset(f"folder:{empty}")
    (empty / "dogs").mkdir()
    (empty / "dogs" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError) as caught:
        load_dataset(f"folder:{empty}")
    message = str(caught.value)
    assert "dogs" in message and "has no images" in message and ".png" in message and ".jpg" in message


def test_folder_unreadable_image_is_named(tmp_path):
    pytest.importorskip("PIL")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            write_image(tmp_path / name / f"{i}.png", (0, 0, 0))
    broken = tmp_path / "a" / "broken.png"
    broken.write_bytes(b"this is not a png")
    splits = load_dataset(f"folder:{tmp_path}", val_fraction=0, test_fraction=0)
    index = splits.train.paths.index(str(broken))
    with pytest.raises(OSError, match="broken.png"):
        splits.train[index]


def test_folder_without_pillow(image_folder, monkeypatch):
    # A None entry in sys.modules makes the import fail, as if Pillow were not installed.
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        load_dataset(f"folder:{image_folder}")


# ----------------------------------------------------------------------------------------------------------
# cifar10:PATH

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGES_PER_BATCH = 12


def fake_batch(first_id, count):
    """A batch in the real format; image i carries its id in its first two bytes, its label is id % 10."""
    rng = np.random.default_rng(first_id)
    data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    ids = np.arange(first_id, first_id + count)
    data[:, 0], data[:, 1] = ids // 256, ids % 256
    return {b"batch_label": b"fake", b"data": data, b"labels": [int(i % 10) for i in ids]}


def write_pickle(path, content):
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=2)


@pytest.fixture
def cifar_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(5):
        write_pickle(folder / f"data_batch_{b + 1}", fake_batch(b * IMAGES_PER_BATCH, IMAGES_PER_BATCH))
    test = fake_batch(1000, 10)
    # A known test image: plane c holds 60 * c everywhere, except the red pixel at row 2, column 5.
    test[b"data"][0] = np.repeat(np.array([0, 60, 120], dtype=np.uint8), 1024)
    test[b"data"][0, 2 * 32 + 5] = 255
    write_pickle(folder / "test_batch", test)
    write_pickle(folder / "batches.meta", {b"label_names": [name.encode() for name in CIFAR_CLASSES]})
    return folder


def image_ids(dataset):
    """The id written into each image, read back through the normalisation."""
    mean, std = dataset.mean[0].item(), dataset.std[0].item()
    ids = []
    for i in range(len(dataset)):
        image, _ = dataset[i]
        high, low = [round((v * std + mean) * 255) for v in image[0, 0, :2].tolist()]
        ids.append(high * 256 + low)
    return ids


def test_cifar10_splits(cifar_folder):
    splits = load_dataset(f"cifar10:{cifar_folder}", val_size=10)
    check_item_types(splits)
    assert splits.class_names == CIFAR_CLASSES and splits.name == "cifar10"
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, (32, 32))
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [50, 10, 10]
    train_ids, val_ids = image_ids(splits.train), image_ids(splits.val)
    assert sorted(train_ids + val_ids) == list(range(5 * IMAGES_PER_BATCH))  # a partition of the batches
    assert [label.item() for _, label in (splits.train[i] for i in range(50))] == [i % 10 for i in train_ids]
    assert image_ids(splits.test)[1:] == list(range(1001, 1010))  # test_batch in order (image 0 rewritten)

    image, label = splits.test[0]
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    expected = ((torch.tensor([0.0, 60.0, 120.0]) / 255 - mean) / std).view(3, 1, 1).expand(3, 32, 32).clone()
    expected[0, 2, 5] = (1.0 - mean[0]) / std[0]
    assert label.item() == 1000 % 10
    assert torch.allclose(image, expected, atol=1e-5)


def test_cifar10_split_is_fixed_and_parent_folder_works(cifar_folder):
    first = load_dataset(f"cifar10:{cifar_folder}", val_size=10)
    # The folder the archive was extracted into also works.
    second = load_dataset(f"cifar10:{cifar_folder.parent}", seed=3, val_size=10)
    assert image_ids(first.val) == image_ids(second.val)


def test_cifar10_missing_files_are_named(cifar_folder):
    os.remove(cifar_folder / "data_batch_3")
    os.remove(cifar_folder / "batches.meta")
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset(f"cifar10:{cifar_folder}")
    missing_part = str(caught.value).split("(")[0]  # what follows "(" lists every expected file
    assert "data_batch_3" in missing_part and "batches.meta" in missing_part
    assert "data_batch_2" not in missing_part


def test_cifar10_bad_inputs(cifar_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match="val_size"):
        load_dataset(f"cifar10:{cifar_folder}")  # the default 5,000 is more than the 60 fake images
    bad = fake_batch(0, 4)
    bad[b"data"] = bad[b"data"][:, :100]
    write_pickle(cifar_folder / "data_batch_2", bad)
    with pytest.raises(ValueError, match="data_batch_2"):
        load_dataset(f"cifar10:{cifar_folder}", val_size=10)


def test_cifar10_refuses_pickled_code(cifar_folder):
    # A pickle that would call os.system when loaded is refused, not run.
    write_pickle(cifar_folder / "test_batch", {b"data": os.system, b"labels": []})
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset(f"cifar10:{cifar_folder}", val_size=10)


# --------------------------------------------------------------------------------------------------------
# Resizing and augmentation (picnn_ext.data.transforms)

from picnn_ext.data.transforms import augment_batch, colour_jitter, resize_splits  # noqa: E402


def test_resize_splits(shapes):
    resized = resize_splits(shapes, 16)
    assert resized.image_size == (16, 16) and resize_splits(shapes, 32) is shapes
    image, label = resized.test[3]
    original, original_label = shapes.test[3]
    assert image.shape == (1, 16, 16) and label == original_label
    expected = torch.nn.functional.interpolate(original[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(image, expected)
    assert resized.test_object_masks.shape == (len(shapes.test), 16, 16)
    assert torch.equal(resized.test_object_masks, shapes.test_object_masks[:, ::2, ::2])  # nearest
    assert len(resized.train) == len(shapes.train) and resized.pixel_mean == shapes.pixel_mean


def test_augment_crops_and_flips_without_jitter():
    """Each output is an H x W window of the image padded by H/8 (zeros), flipped or not; both happen."""
    images = torch.randn(64, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    out = augment_batch(images, torch.Generator().manual_seed(1), jitter=0)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    flips, offsets = 0, set()
    for i in range(len(images)):
        matches = [(top, left, flip) for top in range(3) for left in range(3) for flip in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(-1) if flip else w)(padded[i, :, top:top + 8, left:left + 8]))]
        assert matches, f"sample {i} is not a crop of its padded image"
        flips += matches[0][2]
        offsets.add(matches[0][:2])
    assert 16 <= flips <= 48 and len(offsets) == 9  # p = 1/2: outside these bounds with probability < 1e-4


def test_augment_draws_from_the_generator_alone():
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    stats = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    first = augment_batch(images, torch.Generator().manual_seed(3), **stats)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(first, augment_batch(images, torch.Generator().manual_seed(3), **stats))
    assert not torch.equal(first, augment_batch(images, torch.Generator().manual_seed(4), **stats))
    pixels = first * torch.tensor(stats["std"]).view(1, 3, 1, 1) + torch.tensor(stats["mean"]).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # jittered pixels stay in [0, 1]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment_batch(images[0], torch.Generator())


def test_colour_jitter_factors():
    pixels = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    ones = torch.ones(3)
    torch.testing.assert_close(colour_jitter(pixels, ones, ones, ones), pixels)  # factor 1 changes nothing
    torch.testing.assert_close(colour_jitter(pixels, 2 * ones, ones, ones), 2 * pixels)  # brightness scales
    grey = colour_jitter(pixels, ones, ones, torch.zeros(3))  # saturation 0: every channel the luminance
    weights = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close(grey, (pixels * weights).sum(1, keepdim=True).expand_as(pixels))
    flat = colour_jitter(pixels, ones, torch.zeros(3), ones)  # contrast 0: the mean grey everywhere
    assert torch.allclose(flat, flat[:, :1, :1, :1].expand_as(flat))
