"""CAR (Abbasi-Asl and Yu): filter importance by classification accuracy reduction, and greedy structural
pruning by it (DESIGN.md section 6).

    importance = filter_importance(model, loader)            # the interpreted layer: one pass, closed form
    importance.car, importance.class_car                     # (K,), (K, C)
    smaller, curve = prune(model, loader, keep=16)           # real compression, the model is not changed
    assignment_agreement(importance.class_car, model.head.P) # share of filters CAR and P agree on
"""
from .agreement import assignment_agreement
from .importance import FilterImportance, filter_importance
from .prune import PruneStep, prune, remove_filters

__all__ = ["FilterImportance", "PruneStep", "assignment_agreement", "filter_importance", "prune", "remove_filters"]
