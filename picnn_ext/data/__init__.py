"""Data sets for training and evaluating: ``load_dataset(spec)`` returns a :class:`DatasetSplits`.

Specs: ``"digits"``, ``"shapes"``, ``"folder:PATH"``, ``"cifar10:PATH"`` (see :mod:`.registry`). The loader
modules are imported on first use, so importing this package needs neither scikit-learn nor Pillow.
"""

from .splits import DatasetSplits
from .registry import (
    BUILTIN_DATASETS,
    DATASET_SPEC_HELP,
    PATH_DATASETS,
    load_dataset,
    parse_dataset_spec,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DATASET_SPEC_HELP",
    "PATH_DATASETS",
    "DatasetSplits",
    "load_dataset",
    "parse_dataset_spec",
]
