"""The settings of one training run, :class:`TrainConfig`, and what may change when a run is resumed."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ..data import parse_dataset_spec

from .methods import METHOD_HELP, METHOD_NAMES

METHODS = METHOD_NAMES
BACKBONES = ("small_cnn",)

# Settings that only say where and how fast a run goes, not what it computes: they may differ between a
# run and its resumption. Every other field must match, or the resumed run would not continue the same
# computation (``epochs`` included, because the cosine schedule is laid out over all of them).
RUNTIME_KEYS = frozenset({"out_dir", "run_name", "device", "workers", "quiet"})


@dataclass
class TrainConfig:
    """One training run. The optimiser follows the PICNN authors (DESIGN.md section 3: Adam, lr 1e-3, weight
    decay 1e-4, cosine schedule, lambda 2); the backbone and the batch (64, against their 128) are smaller, so
    that the built-in data sets train on a CPU."""

    method: str = "picnn"
    dataset: str = "digits"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # Cosine annealing from ``lr`` to 0 over all training steps; "none" keeps ``lr`` constant.
    schedule: str = "cosine"
    seed: int = 0
    backbone: str = "small_cnn"
    # Channels of the small backbone's first stage (each later stage doubles them).
    width: int = 32
    # Stages of the small backbone; None picks them from the image size (2 for 8x8, 3 from 16x16 up).
    stages: Optional[int] = None
    # K: filters of the interpreted layer.
    num_filters: int = 64
    # lambda: weight of the interpretation pathway's loss (PICNN only).
    lam: float = 2.0
    # NND's loss weights (the authors' CIFAR ResNet-56 values): sparsity lambda_s with target tau (a share of
    # each layer's filters), information lambda_m, alignment lambda_k.
    lambda_s: float = 1.5e-4
    tau: float = 0.0
    lambda_m: float = 0.01
    lambda_k: float = 1.0
    out_dir: str = "runs"
    # Folder name of the run under ``out_dir``; default "<method>-<dataset>-seed<seed>".
    run_name: Optional[str] = None
    # "auto" picks CUDA where available (the local GPU under torchrun), else the CPU.
    device: str = "auto"
    # DataLoader worker processes; 0 reads in the training process, best for in-memory data sets.
    workers: int = 0
    quiet: bool = False

    def validate(self) -> "TrainConfig":
        """Raise ValueError with a readable message for any setting that cannot work; returns self."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)} ({METHOD_HELP})")
        parse_dataset_spec(self.dataset)  # Raises with the list of accepted specs.
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; expected one of {', '.join(BACKBONES)}")
        if self.schedule not in ("cosine", "none"):
            raise ValueError(f"unknown schedule {self.schedule!r}; expected 'cosine' or 'none'")
        for name in ("epochs", "batch_size", "width", "num_filters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.stages is not None and self.stages < 1:
            raise ValueError(f"stages must be at least 1, got {self.stages}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("weight_decay", "lam", "lambda_s", "tau", "lambda_m", "lambda_k"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.run_name is not None and (not self.run_name or os.sep in self.run_name):
            raise ValueError(f"run_name must be a plain folder name, got {self.run_name!r}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """The config stored in a checkpoint or ``config.json``; keys this version does not know are an
        error rather than silently dropped, so that an incompatible run is noticed."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; the run was made by another version")
        return cls(**dict(values))

    def default_run_name(self) -> str:
        name, path = parse_dataset_spec(self.dataset)
        if path is not None:
            # "folder:/data/pets" -> "folder-pets": the last path part tells runs on different folders apart.
            name = f"{name}-{os.path.basename(os.path.normpath(path))}"
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        return f"{self.method}-{name}-seed{self.seed}"

    def run_dir(self) -> str:
        return os.path.join(self.out_dir, self.run_name or self.default_run_name())


def differing_keys(stored: TrainConfig, requested: TrainConfig) -> List[str]:
    """Keys outside :data:`RUNTIME_KEYS` on which two configs differ, sorted."""
    stored_values, requested_values = stored.to_dict(), requested.to_dict()
    return sorted(
        key for key in stored_values if key not in RUNTIME_KEYS and stored_values[key] != requested_values[key]
    )
