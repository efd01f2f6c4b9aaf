"""Gradient-change metric of Tyagi 2025, Eq. 8, used to detect critical learning phases.

delta_i = | |G_i|^2 - |G_{i-1}|^2 | / |G_{i-1}|^2, with |G|^2 the sum of per-layer squared norms
accumulated in float64. The first step has no predecessor and reports 0.
"""
from __future__ import annotations

import math

from .noise_scale import layer_sq_norms


def grad_sq_norm(params) -> float:
    """|G|^2 = sum over layers of |g_l|^2 in float64; parameters without a gradient count as 0."""
    return float(layer_sq_norms([p.grad for p in params]).sum())


def grad_change(prev_sq: float, cur_sq: float) -> float:
    """Eq. 8 for one pair of squared norms."""
    if prev_sq == 0.0:
        return 0.0 if cur_sq == 0.0 else math.inf
    return abs(cur_sq - prev_sq) / prev_sq


class GradChange:
    """Running Eq. 8: feed |G_i|^2 each step, get delta_i.

    With ``ewma > 0`` the returned value is smoothed: s_i = ewma * s_{i-1} + (1 - ewma) * delta_i,
    starting from s_1 = delta_1 (the first change, at the second step). ``ewma = 0`` is the raw
    Eq. 8. The first step has no predecessor and returns 0 either way.
    """

    def __init__(self, ewma: float = 0.0):
        if not 0.0 <= ewma < 1.0:
            raise ValueError(f"ewma must be in [0, 1), got {ewma}")
        self.ewma = ewma
        self.prev: float | None = None
        self.smoothed: float | None = None

    def update(self, cur_sq: float) -> float:
        if self.prev is None:
            self.prev = cur_sq
            return 0.0
        delta = grad_change(self.prev, cur_sq)
        self.prev = cur_sq
        if self.ewma and self.smoothed is not None and math.isfinite(self.smoothed):
            delta = self.ewma * self.smoothed + (1.0 - self.ewma) * delta
        self.smoothed = delta
        return delta

    def state_dict(self) -> dict:
        return {"prev": self.prev, "smoothed": self.smoothed}

    def load_state_dict(self, d: dict) -> None:
        self.prev = d.get("prev")
        self.smoothed = d.get("smoothed")


def is_critical(delta: float, threshold: float) -> bool:
    """Tyagi 2025, Sec. IV: a step is in a critical phase when the gradient change (Eq. 8) is at
    least the threshold."""
    return delta >= threshold
