"""Step-function gradient scaling U(X) of Tyagi 2025, Eq. 6-7.

The update is w <- w - eta * U * G (Eq. 5c with A(G) = U * G), where U is a step function of the
critical-phase test of Eq. 8 (delta >= threshold, see :mod:`.critical`):

- ``polarity = "experiments"`` (default): U = X in critical phases, 1 otherwise. This is what the
  paper's Fig. 7/8 runs do ("scale by X when delta >= threshold").
- ``polarity = "equation"``: U = X outside critical phases, 1 inside, as Eq. 6a is printed.

The paper states both; the choice is a config key so either reading can be run and compared.
X = 1 leaves the gradients untouched (no multiplication happens), so it reproduces an unscaled run
bit for bit.
"""
from __future__ import annotations

import torch

POLARITIES = ("experiments", "equation")


def step_factor(critical: bool, factor: float, polarity: str) -> float:
    """U(X) for one step."""
    if polarity == "experiments":
        return factor if critical else 1.0
    if polarity == "equation":
        return 1.0 if critical else factor
    raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")


@torch.no_grad()
def scale_grads_(grads: list[torch.Tensor], factor: float) -> None:
    """G <- factor * G in place; nothing is touched when factor is exactly 1."""
    if factor == 1.0:
        return
    for g in grads:
        g.mul_(factor)
