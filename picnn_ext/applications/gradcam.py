"""Grad-CAM (Selvaraju et al., ICCV 2017) at the interpreted layer: the baseline saliency map.

For the map A (B, K, h, w) and the logit l_c of a class, the weight of filter k is the spatial mean of
dl_c / dA_k, and the map is relu(sum_k weight_k A_k). With a GAP + Linear head the weights are the
classifier's row (divided by h w); the autograd version below serves any head.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["grad_cam"]


def grad_cam(A: torch.Tensor, logits_from_features: Callable[[torch.Tensor], torch.Tensor],
             classes: torch.Tensor) -> torch.Tensor:
    """(B, h, w) Grad-CAM maps of ``classes`` (B,) from features ``A`` (B, K, h, w)."""
    if A.dim() != 4:
        raise ValueError(f"grad_cam: A must be (B, K, h, w), got shape {tuple(A.shape)}")
    if classes.shape != (A.shape[0],):
        raise ValueError(f"grad_cam: classes must be ({A.shape[0]},), one per image, got {tuple(classes.shape)}")
    with torch.enable_grad():
        A = A.detach().requires_grad_(True)
        logits = logits_from_features(A)
        # Each image's logit depends on its own row of A alone, so one backward of the sum gives all.
        chosen = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
        (gradient,) = torch.autograd.grad(chosen, A)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * A.detach()).sum(dim=1))
