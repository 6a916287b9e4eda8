"""Metrics of class-specific filters (DESIGN.md sections 3 and 7)."""
from .accuracy import AccuracyMeter, PathwayAccuracy, accuracy_pathways
from .mutual_information import mutual_information_score

__all__ = ["AccuracyMeter", "PathwayAccuracy", "accuracy_pathways", "mutual_information_score"]
