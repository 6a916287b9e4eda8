"""Untargeted L-infinity attacks in raw pixel space: FGSM (Goodfellow et al., 2015) and PGD (Madry et al.,
2018), both on the cross-entropy of the true label.

``logits(raw)`` maps raw images to logits; ``clamp(raw)`` keeps them valid pixels (the data set's pixel
range). Every step stays within ``epsilon`` of the clean image in every pixel.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_EPSILON", "DEFAULT_PGD_STEPS", "check_attack_options", "default_step_size", "fgsm", "pgd"]

DEFAULT_EPSILON = 8.0 / 255.0
DEFAULT_PGD_STEPS = 10
# Madry et al.'s rule: the steps together can cross the ball 2.5 times.
STEP_SIZE_FACTOR = 2.5

Logits = Callable[[torch.Tensor], torch.Tensor]
Clamp = Callable[[torch.Tensor], torch.Tensor]


def default_step_size(epsilon: float, steps: int) -> float:
    return STEP_SIZE_FACTOR * epsilon / steps


def check_attack_options(epsilon: float, steps: int = 1, step_size: Optional[float] = None) -> None:
    """ValueError naming the option when an attack setting is out of range."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0 (in raw pixel units, e.g. 8/255), got {epsilon!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")


def _input_gradient(logits: Logits, raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        raw = raw.detach().requires_grad_(True)
        # A sum, not a mean: each image's gradient is its own loss's, whatever the batch size.
        loss = F.cross_entropy(logits(raw), targets, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, raw)
    return gradient


def fgsm(logits: Logits, raw: torch.Tensor, targets: torch.Tensor, epsilon: float,
         clamp: Clamp = lambda x: x) -> torch.Tensor:
    """One signed-gradient step of size ``epsilon`` up the loss: clamp(raw + epsilon sign(grad))."""
    check_attack_options(epsilon)
    gradient = _input_gradient(logits, raw, targets)
    return clamp(raw + epsilon * gradient.sign()).detach()


def pgd(logits: Logits, raw: torch.Tensor, targets: torch.Tensor, epsilon: float, *,
        steps: int = DEFAULT_PGD_STEPS, step_size: Optional[float] = None, clamp: Clamp = lambda x: x,
        random_start: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``steps`` signed-gradient steps of ``step_size`` (default 2.5 epsilon / steps), each followed by the
    projection onto the epsilon ball around ``raw`` and the pixel range; from a uniform random point of the
    ball when ``random_start`` (drawn from ``generator``)."""
    check_attack_options(epsilon, steps, step_size)
    step_size = default_step_size(epsilon, steps) if step_size is None else step_size
    raw = raw.detach()
    adversarial = raw
    if random_start and epsilon > 0:
        noise = torch.rand(raw.shape, generator=generator, device=raw.device, dtype=raw.dtype)
        adversarial = clamp(raw + epsilon * (2.0 * noise - 1.0))
    for _ in range(steps):
        gradient = _input_gradient(logits, adversarial, targets)
        adversarial = adversarial + step_size * gradient.sign()
        adversarial = clamp(torch.min(torch.max(adversarial, raw - epsilon), raw + epsilon)).detach()
    return adversarial
