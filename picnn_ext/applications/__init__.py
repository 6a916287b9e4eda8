"""The applications that class-specific filters are claimed to help, measured: object localisation from a
class's filters (against ground-truth masks) and adversarial-sample detection from filter agreement.

    net = RawPixelNet(method, model, splits)           # raw pixels in; the method splits the network
    filters = class_filter_weights(net)                # (C, K): P's assignment, G, or top filters
    result = localise(net, filters, splits.test, splits.test_object_masks)
    reference = detection_reference(net, filters)       # filter agreement, or NND's class-mean paths
    detection = detect(net, reference, splits.test, epsilon=8 / 255, steps=10)

Layering: the report and the CLI call this package; it calls the training methods' hooks
(:class:`picnn_ext.train.methods.TrainingMethod`: ``features``, ``logits_from_features``,
``assigned_filters``, ``calculation_path``) and never the other way round.

A new method plugs in through those hooks alone. NND (a ``DecoupledNet``, no ``features``/``head``) is to
override, in ``train/methods/nnd.py``: ``features`` -> ``model(images).features`` (the interpreted layer's
gated map), ``logits_from_features`` -> ``model.classifier(A)``, and ``calculation_path`` ->
``torch.cat(model(images).gates, dim=1).float()``; it keeps ``assigned_filters`` = None (top filters by
class-mean activation). Detection then scores the path distance to the predicted class's mean path.
"""
from .attacks import DEFAULT_EPSILON, DEFAULT_PGD_STEPS, check_attack_options, default_step_size, fgsm, pgd
from .class_filters import ClassFilters, class_filter_weights, class_mean_activation, top_filters
from .detection import (AttackResult, DetectionReference, DetectionResult, auroc, detect, detection_reference,
                        filter_agreement, path_distance)
from .gradcam import grad_cam
from .localisation import (HIT_THRESHOLDS, KEEP_FRACTION, LocalisationResult, activation_maps, gaussian_blur,
                           gradient_maps, iou, keep_top, localise)
from .network import RawPixelNet

__all__ = ["AttackResult", "ClassFilters", "DEFAULT_EPSILON", "DEFAULT_PGD_STEPS", "DetectionReference",
           "DetectionResult", "HIT_THRESHOLDS", "KEEP_FRACTION", "LocalisationResult", "RawPixelNet",
           "activation_maps", "auroc", "check_attack_options", "class_filter_weights", "class_mean_activation",
           "default_step_size", "detect", "detection_reference", "fgsm", "filter_agreement", "gaussian_blur",
           "grad_cam", "gradient_maps", "iou", "keep_top", "localise", "path_distance", "pgd", "top_filters"]
