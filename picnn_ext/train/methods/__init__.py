"""The training methods, by ``--method`` name: the one place where a method's training rule is chosen.

    method = create_method(config)            # config.method names it
    model = method.build_model(in_channels, num_classes, image_size)

See :mod:`.base` for what a method decides; each method is one file here.
"""
from __future__ import annotations

from typing import Dict, Type

from .base import EvalOutputs, TrainingMethod, backbone_stages, build_backbone, build_network
from .csg import CSGMethod, is_csg_epoch
from .nnd import NNDMethod
from .picnn import PICNNMethod, STDMethod


# Listed in the order tables show them: the baseline first.
METHOD_CLASSES: Dict[str, Type[TrainingMethod]] = {
    cls.name: cls for cls in (STDMethod, PICNNMethod, CSGMethod, NNDMethod)
}
METHOD_NAMES = tuple(METHOD_CLASSES)
METHOD_HELP = "; ".join(f"'{name}': {cls.help}" for name, cls in METHOD_CLASSES.items())


def create_method(config: "TrainConfig") -> TrainingMethod:  # picnn_ext.train.config.TrainConfig
    """The method that ``config.method`` names, bound to the config."""
    try:
        cls = METHOD_CLASSES[config.method]
    except KeyError:
        raise ValueError(f"unknown method {config.method!r}; expected one of {', '.join(METHOD_NAMES)} "
                         f"({METHOD_HELP})") from None
    return cls(config)


__all__ = ["CSGMethod", "EvalOutputs", "METHOD_CLASSES", "METHOD_HELP", "METHOD_NAMES", "NNDMethod", "TrainingMethod", "backbone_stages",
           "build_backbone", "build_network", "create_method", "is_csg_epoch"]
