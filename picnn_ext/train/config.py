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
INTERPRETED_ACTIVATIONS = ("none", "relu")
AMP_DTYPES = ("none", "bf16")

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
    # The network (``--model``): "small_cnn", a torchvision classifier ("resnet18", "torchvision:resnet18")
    # or a timm one ("timm:convnext_atto"), see picnn_ext.models.registry; random weights unless ``weights``.
    backbone: str = "small_cnn"
    # A local state-dict file of the torchvision/timm model to start from (its classifier is not used).
    weights: Optional[str] = None
    # Images are resized to image_size x image_size (bilinear) before the network; None keeps the data's.
    image_size: Optional[int] = None
    # Random crop (padding image_size / 8), horizontal flip and colour jitter of the training batches.
    augment: bool = False
    # "bf16": the forward (backbone, ops, head) under torch.autocast in bfloat16; "none": float32.
    amp: str = "none"
    # The model and the batches in the channels_last memory format (faster convolutions on GPUs).
    channels_last: bool = False
    # What follows the interpreted 3x3 conv: "none" (the authors' layer) or "relu".
    interpreted_activation: str = "none"
    # Channels of the small backbone's first stage (each later stage doubles them).
    width: int = 32
    # Stages of the small backbone; None picks them from the image size (2 for 8x8, 3 from 16x16 up).
    stages: Optional[int] = None
    # K: filters of the interpreted layer.
    num_filters: int = 64
    # lambda: weight of the interpretation pathway's loss (PICNN only).
    lam: float = 2.0
    # CSG (DESIGN.md section 4): STD epochs during the warm-up, then a CSG epoch every csg_period-th epoch;
    # the gates start at csg_init; the L1 hinge lets csg_density * C * K of gate mass through free and
    # weighs the rest by csg_lam_reg; gate_lr is G's learning rate (None: lr). Adam moves each gate by about
    # gate_lr per step whatever the gradient's size, and G trains in one epoch of csg_period only: at 1e-3
    # (the network's lr) the gates of the digits budget stay near fully open (L1 density 0.93 after 13
    # epochs), at 1e-2 they reach the density budget (0.20-0.23 after 40 epochs, ACC1 unchanged).
    csg_warmup: int = 5
    csg_period: int = 3
    csg_init: float = 0.5
    csg_density: float = 0.2
    csg_lam_reg: float = 1e-3
    gate_lr: Optional[float] = 1e-2
    # NND's loss weights (the authors' CIFAR ResNet-56 values): sparsity lambda_s with target tau (a share of
    # each layer's filters), information lambda_m, alignment lambda_k.
    lambda_s: float = 1.5e-4
    tau: float = 0.0
    lambda_m: float = 0.01
    lambda_k: float = 1.0
    # NND's training recipe (picnn_ext.train.methods.nnd; all off by default, which is the plain objective
    # from the first step). Epoch e (from 1) weighs the sparsity by 0 while e <= nnd_warmup (the network
    # and the controllers learn the task with every gate free), then by lambda_s * min(1, (e - nnd_warmup)
    # / nnd_ramp) (lambda_s at once when nnd_ramp is 0). The last nnd_finetune epochs train with the gates
    # inference uses (z > 0, no draw): the controllers stop moving and the convs and the batch norms'
    # statistics adapt to the paths the skipping path will take. nnd_controller_lr: the controllers'
    # learning rate (None: lr).
    nnd_warmup: int = 0
    nnd_ramp: int = 0
    nnd_finetune: int = 0
    nnd_controller_lr: Optional[float] = None
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
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ValueError(f"model must be a model name, got {self.backbone!r}")
        if self.interpreted_activation not in INTERPRETED_ACTIVATIONS:
            raise ValueError(f"unknown interpreted_activation {self.interpreted_activation!r}; expected "
                             f"{' or '.join(map(repr, INTERPRETED_ACTIVATIONS))}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown amp {self.amp!r}; expected {' or '.join(map(repr, AMP_DTYPES))}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {self.image_size}")
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
        if self.csg_warmup < 0:
            raise ValueError(f"csg_warmup must be >= 0, got {self.csg_warmup}")
        if self.csg_period < 1:
            raise ValueError(f"csg_period must be at least 1, got {self.csg_period}")
        for name in ("csg_init", "csg_density"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.csg_lam_reg >= 0:
            raise ValueError(f"csg_lam_reg must be >= 0, got {self.csg_lam_reg}")
        if self.gate_lr is not None and not self.gate_lr > 0:
            raise ValueError(f"gate_lr must be positive, got {self.gate_lr}")
        for name in ("nnd_warmup", "nnd_ramp", "nnd_finetune"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (epochs), got {value!r}")
        if self.method == "nnd" and (self.nnd_warmup or self.nnd_finetune) and \
                self.nnd_warmup + self.nnd_finetune >= self.epochs:
            raise ValueError(f"nnd_warmup ({self.nnd_warmup}) + nnd_finetune ({self.nnd_finetune}) must be less "
                             f"than epochs ({self.epochs}): no epoch would train the gates' sparsity")
        if self.nnd_controller_lr is not None and not self.nnd_controller_lr > 0:
            raise ValueError(f"nnd_controller_lr must be positive, got {self.nnd_controller_lr}")
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
