"""The data set spec string (``picnn-ext train --dataset SPEC``) and the loader it selects.

A spec is a bare name for the built-in sets (``"digits"``, ``"shapes"``) or ``NAME:PATH`` for the sets read
from disk (``"folder:/data/pets"``, ``"cifar10:/data/cifar-10-batches-py"``). Every loader returns a
:class:`DatasetSplits`.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

from .splits import DatasetSplits

# Names that take no path, and names that need one after a colon.
BUILTIN_DATASETS = ("digits", "shapes")
PATH_DATASETS = ("folder", "cifar10")
DATASET_SPEC_HELP = (
    "one of 'digits' (scikit-learn's 8x8 handwritten digits), 'shapes' (synthetic shapes with object masks), "
    "'folder:PATH' (one subfolder of images per class) or "
    "'cifar10:PATH' (the extracted CIFAR-10 python batches, cifar-10-batches-py)"
)


def parse_dataset_spec(spec: str) -> Tuple[str, Optional[str]]:
    """Split a spec into ``(name, path)``; ``path`` is None for the built-in sets.

    Only the first colon separates, so a path may itself hold colons. The name is case-insensitive;
    ``~`` in the path is expanded. Raises ValueError for an unknown name or a missing or superfluous path.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty data set spec {spec!r}; expected {DATASET_SPEC_HELP}")
    name, sep, path = spec.strip().partition(":")
    name = name.strip().lower()
    if name in BUILTIN_DATASETS:
        if sep:
            raise ValueError(f"data set {name!r} is built in and takes no path (got {spec!r})")
        return name, None
    if name in PATH_DATASETS:
        if not path.strip():
            raise ValueError(f"data set {name!r} needs a path: '{name}:PATH' (got {spec!r})")
        return name, os.path.expanduser(path.strip())
    raise ValueError(f"unknown data set {spec!r}; expected {DATASET_SPEC_HELP}")


def load_dataset(spec: str, seed: int = 0, **options: Any) -> DatasetSplits:
    """Load the data set named by ``spec`` (see :func:`parse_dataset_spec`).

    ``seed`` is accepted so that every caller can pass its run seed, but no data set depends on it: the
    splits (and the generated ``shapes`` images) are fixed, so that runs with different seeds train and
    are scored on the same data. Shuffling the batches is the caller's business.

    ``options`` go to the loader, e.g. ``image_size=32`` for ``folder:`` or ``val_size=1000`` for
    ``cifar10:``; a loader rejects options it does not know with a TypeError.
    """
    del seed  # See the docstring: the data do not depend on it.
    name, path = parse_dataset_spec(spec)
    # The loaders are imported here, on demand, so that `import picnn_ext.data` stays cheap and a data
    # set's optional dependency (scikit-learn, Pillow) is only needed when that data set is used.
    if name == "digits":
        from .digits import load_digits

        return load_digits(**options)
    if name == "shapes":
        from .shapes import load_shapes

        return load_shapes(**options)
    if name == "folder":
        from .folder import load_image_folder

        return load_image_folder(path, **options)
    if name == "cifar10":
        from .cifar10 import load_cifar10

        return load_cifar10(path, **options)
    raise AssertionError(f"parse_dataset_spec accepted {name!r} but no loader handles it")
