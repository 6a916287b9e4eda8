"""The tables of the reports: the metric columns of a set of runs, their titles, and a markdown table."""

from __future__ import annotations

import re
from typing import Dict, List, Sequence

from ..train.methods import METHOD_NAMES

__all__ = ["METHOD_ORDER", "METRICS", "METRIC_TITLES", "MISSING", "markdown_table", "metric_columns",
           "metric_title"]

METRICS = ("acc1", "acc2", "acc3", "mis")
METRIC_TITLES = {"acc1": "ACC1", "acc2": "ACC2", "acc3": "ACC3", "mis": "MIS", "density": "L1 density",
                 "open": "open gates", "car_decisive": "CAR>0 filters", "car_agreement": "CAR agrees",
                 # The applications' columns (report/applications.py).
                 "loc_act_iou": "IoU act", "loc_act_hit": "hit act", "loc_grad_iou": "IoU grad",
                 "loc_grad_hit": "hit grad", "loc_cam_iou": "IoU Grad-CAM", "loc_cam_hit": "hit Grad-CAM",
                 "fgsm_success": "FGSM success", "fgsm_auroc": "AUROC FGSM", "pgd_success": "PGD success",
                 "pgd_auroc": "AUROC PGD", "topk_purity": "top-k purity"}
# Methods in the order tables list them: the baseline first.
METHOD_ORDER = {name: order for order, name in enumerate(METHOD_NAMES)}
MISSING = "–"


def metric_columns(summaries: Sequence[Dict]) -> List[str]:
    """The test metrics of a set of runs: the common ones first, then each method's own, in first-seen order.
    A run without a column (STD has no L1 density) shows a dash there."""
    seen = list(METRICS)
    for summary in summaries:
        seen += [name for name in summary["test"] if name not in seen]
    # NND's per-layer open-gate shares (open_l1, open_l2, ...) stay in the runs' files and reports; the tables
    # show their mean over the layers ("open").
    return [name for name in seen if any(name in summary["test"] for summary in summaries)
            and not re.fullmatch(r"open_l\d+", name)]


def metric_title(name: str) -> str:
    return METRIC_TITLES.get(name, name)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table padded to aligned columns, so that it also reads well printed in a terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])
