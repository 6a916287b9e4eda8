"""``picnn-ext car RUN_DIR``: CAR of a finished run's filters and greedy pruning by it, as ``car.json`` and
two figures.

Splits: every pruning decision is made on the validation split (the split the run selected its epoch on);
the test split is only reported (its CAR matrix, the figure, and the accuracy at each step of the curve),
so that the test numbers stay an unbiased estimate.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

from torch.utils.data import DataLoader

from ..car import assignment_agreement, filter_importance, prune
from ..car.importance import most_important_class
from ..run_folder import Run, atomic_write_json
from ..train.methods import create_method
from ..train.trainer import EVAL_BATCH_SIZE

CAR_FILE = "car.json"
CURVE_FIGURE = "car_curve.png"
CLASS_CAR_FIGURE = "class_car.png"


def _loader(dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=EVAL_BATCH_SIZE, shuffle=False)


def _agreement(model, config, class_car) -> Dict[str, float]:
    """Agreement of CAR's most important class with the class the method assigns each filter (P or G),
    keyed by the matrix's symbol; empty for a method without such a matrix."""
    assigned = create_method(config).filter_class_matrix(model)
    if assigned is None:
        return {}
    symbol, matrix = assigned
    return {symbol: assignment_agreement(class_car, matrix.detach().float().cpu())}


def car_agreement(run_dir: str, splits=None) -> Dict[str, float]:
    """CAR read against the run's own assignment of filters to classes (P for PICNN and STD, G for CSG), on the
    test split (one pass: the closed form); ``{}`` for a method without such a matrix.

    - ``car_decisive``: the share of the interpreted layer's filters whose removal costs some class accuracy,
      i.e. that have a most important class at all;
    - ``car_agreement``: among those, the share whose most important class is the one P or G assigns; NaN
      where no filter is decisive (a redundant layer: removing any one filter changes no prediction), so that
      "undefined" does not read as "disagrees".
    """
    run = Run(run_dir)
    model, splits = run.load_model(splits)
    config = run.config()
    assigned = create_method(config).filter_class_matrix(model)
    if assigned is None:
        return {}
    class_car = filter_importance(model, _loader(splits.test)).class_car
    decisive = most_important_class(class_car) >= 0
    share = float(decisive.double().mean())
    if not bool(decisive.any()):
        return {"car_decisive": share, "car_agreement": math.nan}
    keep = decisive.nonzero().flatten()
    agreement = assignment_agreement(class_car[keep], assigned[1].detach().float().cpu()[:, keep])
    return {"car_decisive": share, "car_agreement": agreement}


def write_car_report(run_dir: str, out_dir: Optional[str] = None, *, layer: Optional[str] = None,
                     keep: Optional[int] = None, min_accuracy: Optional[float] = None, per_round: int = 1,
                     splits=None) -> str:
    """Compute CAR (validation and test) and the greedy pruning curve of ``layer`` (default: the interpreted
    layer) of the run in ``run_dir``; write ``car.json`` and the figures into ``out_dir`` (default
    ``RUN_DIR/car``) and return the path of ``car.json``. Without ``keep`` or ``min_accuracy`` the curve goes
    down to one filter. Everything is computed before anything is written, and each file is written
    atomically, so an error leaves nothing half-written."""
    # Imported first: a missing matplotlib fails before minutes of computing.
    from . import car_figures

    run = Run(run_dir)
    model, splits = run.load_model(splits)
    config = run.config()
    val, test = _loader(splits.val), _loader(splits.test)
    val_importance = filter_importance(model, val, layer)
    test_importance = filter_importance(model, test, layer)
    if keep is None and min_accuracy is None:
        keep = 1
    smaller, curve = prune(model, val, layer, keep=keep, min_accuracy=min_accuracy, per_round=per_round,
                           eval_data=test)
    curve = [step.to_dict() for step in curve]
    removed = [index for step in curve for index in step["removed"]]
    name = os.path.basename(os.path.normpath(run_dir))
    layer_name = val_importance.layer
    result: Dict[str, Any] = {
        "run": name, "method": config.method, "dataset": config.dataset, "layer": layer_name,
        "num_filters": val_importance.num_filters, "class_names": list(splits.class_names),
        "decisions_split": "val", "reported_split": "test",
        "stop": {"keep": keep, "min_accuracy": min_accuracy, "per_round": per_round},
        "val": val_importance.to_dict(), "test": test_importance.to_dict(),
        "agreement_test": _agreement(model, config, test_importance.class_car) if layer is None else {},
        "curve": curve,
        "pruned": {"num_filters": curve[-1]["num_filters"], "val_accuracy": curve[-1]["accuracy"],
                   "test_accuracy": curve[-1]["eval_accuracy"], "removed": removed,
                   "kept": [i for i in range(val_importance.num_filters) if i not in set(removed)],
                   "parameters": sum(p.numel() for p in smaller.parameters()),
                   "parameters_before": sum(p.numel() for p in model.parameters())},
    }

    out_dir = out_dir or os.path.join(run_dir, "car")
    os.makedirs(out_dir, exist_ok=True)
    car_figures.plot_prune_curve(curve, os.path.join(out_dir, CURVE_FIGURE), data_label="validation",
                                 eval_label="test", title=f"greedy CAR pruning of {layer_name} ({name})")
    car_figures.plot_class_car(test_importance.class_car.numpy(), result["class_names"],
                               os.path.join(out_dir, CLASS_CAR_FIGURE),
                               title=f"class-wise CAR of {layer_name} (test split, {name})")
    path = os.path.join(out_dir, CAR_FILE)
    atomic_write_json(result, path)
    return path
