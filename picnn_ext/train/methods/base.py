"""What a training method is to the trainer: the one place where ``--method`` decides the training rule.

The trainer owns the loop (data order, optimiser, schedule, checkpoints, evaluation, DDP); a method owns
what differs between STD, PICNN, CSG and NND:

- ``build_model``: the network (the same backbone for every method, so that they compare);
- ``prepare`` and ``parameter_groups``: what trains, at which learning rate;
- ``training_loss``: one step's forward and loss (CSG switches paths by epoch);
- ``after_step``: a projection or clamp after the optimiser step (CSG's gate projection);
- ``eval_outputs``: the named logits scored on a split (``acc1`` always: the network a user deploys), the
  interpreted layer's output for the MIS, and per-input measures summed over the batch (NND's open-gate
  shares), which the evaluation averages and ``eval_metrics`` names: they are part of the evaluation's
  result, the method keeps no state between batches;
- ``model_metrics``: numbers read off the weights alone (CSG's L1 density);
- ``filter_class_matrix``: the (C, K) matrix that assigns filters to classes (P, G), if any;
- for the applications (:mod:`picnn_ext.applications`: localisation, adversarial detection):
  ``features`` and ``logits_from_features`` (the network split at the interpreted layer),
  ``assigned_filters`` (the (C, K) filter weights of each class: the method's ``class_filter_weights`` of
  its filter-class matrix, or None to rank filters by class-mean activation) and ``calculation_path`` (NND's per-input gate path, None elsewhere).

Everything a method does in a step stays on the device (no ``.item()``), as the trainer's loop requires.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ...models.registry import backbone_stages, create_backbone

# "TrainConfig" in the annotations is picnn_ext.train.config.TrainConfig, not imported: the config imports this
# registry for the method names, and the registry needs nothing of the config but its attributes.

__all__ = ["EvalOutputs", "TrainingMethod", "backbone_stages", "build_backbone", "build_network"]


def _create_backbone(config: "TrainConfig", in_channels: int, image_size) -> Tuple[nn.Module, int, bool]:
    return create_backbone(config.backbone, in_channels=in_channels, image_size=tuple(image_size),
                           weights=config.weights, width=config.width, stages=config.stages)


def build_backbone(config: "TrainConfig", in_channels: int, image_size) -> Tuple[nn.Module, int]:
    """(backbone, its output channels (B, C, H, W)) of a run: the same for every method. ``config.backbone``
    names it (``--model``: the small CNN, a torchvision or a timm CNN, see :mod:`picnn_ext.models.registry`),
    with ``config.weights`` loaded when given. A model whose features are tokens (a ViT) is refused here:
    :func:`build_network` takes it."""
    backbone, channels, tokens = _create_backbone(config, in_channels, image_size)
    if tokens:
        raise ValueError(f"model {config.backbone!r} yields tokens, not a feature map; method {config.method!r} "
                         f"needs a CNN")
    return backbone, channels


def build_network(config: "TrainConfig", network: type, in_channels: int, num_classes: int, image_size,
                  **options) -> nn.Module:
    """``network`` (an :class:`~picnn_ext.nn.InterpretedNet`: PICNN, CSG) on the run's backbone, with the
    run's interpreted layer (K filters, the activation after it, a per-token Linear for a ViT's tokens);
    ``options`` go to the network (its head's)."""
    backbone, channels, tokens = _create_backbone(config, in_channels, image_size)
    activation = None if config.interpreted_activation == "none" else config.interpreted_activation
    return network(backbone, channels, num_classes, num_filters=config.num_filters, tokens=tokens,
                   interpreted_activation=activation, **options)


@dataclass
class EvalOutputs:
    """What one evaluation batch gives the scorer."""

    logits: Dict[str, Optional[torch.Tensor]]  # name -> (B, C) logits; "acc1" is the deployed network
    features: Optional[torch.Tensor] = None      # A, for the MIS; None: the method has no interpreted layer
    channel_dim: int = 1                          # where the K filters lie in ``features``
    # Per-batch sums over the samples of what the method measures per input (NND: the open-gate shares),
    # (M,) on the device; the evaluation sums them and hands their mean to ``eval_metrics``.
    sums: Optional[torch.Tensor] = None


class TrainingMethod:
    """The base: plain cross-entropy on a network's logits. Subclasses override what differs."""

    name = ""
    help = ""
    # The accuracies ``eval_outputs`` reports, in the order tables show them.
    accuracy_names: Tuple[str, ...] = ("acc1",)
    # DDP must look for parameters without a gradient in a step (CSG's G in its STD epochs).
    ddp_find_unused_parameters = False

    def __init__(self, config: "TrainConfig"):
        self.config = config

    def build_model(self, in_channels: int, num_classes: int, image_size) -> nn.Module:
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Adjust a freshly built model before the optimiser sees it (e.g. freeze what never trains)."""

    def parameter_groups(self, model: nn.Module) -> List[dict]:
        """The optimiser's parameter groups; by default every trainable parameter at ``config.lr``."""
        return [{"params": [parameter for parameter in model.parameters() if parameter.requires_grad]}]

    def training_loss(self, net: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, epoch: int,
                      generator: torch.Generator) -> torch.Tensor:
        """One step's loss. ``net`` may be a DDP wrapper of the model: call it, not its submodules."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, *, epoch: int) -> None:
        """Called after every optimiser step, on the bare model."""

    def eval_outputs(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                     generator: torch.Generator) -> EvalOutputs:
        raise NotImplementedError

    def eval_metrics(self, means: torch.Tensor) -> Dict[str, float]:
        """The named metrics of ``EvalOutputs.sums`` averaged over the evaluated samples (M,), on the host."""
        return {}

    def model_metrics(self, model: nn.Module) -> Dict[str, float]:
        """Numbers read off the weights (one host read each), logged per epoch and in the summary."""
        return {}

    def filter_class_matrix(self, model: nn.Module) -> Optional[Tuple[str, torch.Tensor]]:
        """(symbol, (C, K) matrix) that assigns the interpreted layer's filters to classes, for the report
        and the comparison with class-wise CAR (PICNN: P; CSG: G); None where the method has none."""
        return None

    # ----------------------------------------------------------------------------------------------------
    # Hooks of the applications (picnn_ext.applications). A method whose network is not an InterpretedNet
    # (NND's DecoupledNet) overrides the first two; all four work on the bare model in eval mode.

    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """A, the interpreted layer's output (B, K, H, W), differentiable with respect to ``images``."""
        return model.features(images)

    def logits_from_features(self, model: nn.Module, A: torch.Tensor) -> torch.Tensor:
        """The deployed network's logits (B, C) from A: what Grad-CAM and the attacks differentiate."""
        return model.head(A).logits

    # Whether training learns the filter-class matrix (STD's P is its random start: it assigns nothing).
    trains_filter_class_matrix = True

    def assigned_filters(self, model: nn.Module) -> Optional[torch.Tensor]:
        """(C, K) non-negative weights of each class's filters, from :meth:`filter_class_matrix` through
        :meth:`class_filter_weights`; None where the method has no trained matrix: the applications then rank
        the filters by class-mean activation on the training split, as the CSG authors do for a standard
        network."""
        found = self.filter_class_matrix(model)
        if found is None or not self.trains_filter_class_matrix:
            return None
        return self.class_filter_weights(found[1])

    def class_filter_weights(self, matrix: torch.Tensor) -> torch.Tensor:
        """The applications' (C, K) weights from the method's filter-class matrix (its own reading of it)."""
        raise NotImplementedError

    def calculation_path(self, model: nn.Module, images: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, L) per-input calculation path (NND: every gate of every layer, 0 or 1); None (the default):
        the method has none, and adversarial detection scores filter agreement instead of path distance."""
        return None

    def epoch_note(self, epoch: int) -> str:
        """A word on what this epoch trains, for the per-epoch line (CSG: which path)."""
        return ""
