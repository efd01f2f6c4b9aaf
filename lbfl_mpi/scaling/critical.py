"""Gradient-change metric of Tyagi 2025, Eq. 8, used to detect critical learning phases.

delta_i = | |G_i|^2 - |G_{i-1}|^2 | / |G_{i-1}|^2, with |G|^2 the sum of per-layer squared norms
accumulated in float64. The first step has no predecessor and reports 0.
"""
from __future__ import annotations

import math

import torch


def grad_sq_norm(params) -> float:
    """|G|^2 = sum over layers of |g_l|^2 in float64; parameters without a gradient count as 0."""
    total = None
    for p in params:
        if p.grad is None:
            continue
        sq = p.grad.detach().to(torch.float64).pow(2).sum()
        total = sq if total is None else total + sq
    return 0.0 if total is None else float(total.item())


def grad_change(prev_sq: float, cur_sq: float) -> float:
    """Eq. 8 for one pair of squared norms."""
    if prev_sq == 0.0:
        return 0.0 if cur_sq == 0.0 else math.inf
    return abs(cur_sq - prev_sq) / prev_sq


class GradChange:
    """Running Eq. 8: feed |G_i|^2 each step, get delta_i."""

    def __init__(self):
        self.prev: float | None = None

    def update(self, cur_sq: float) -> float:
        delta = 0.0 if self.prev is None else grad_change(self.prev, cur_sq)
        self.prev = cur_sq
        return delta

    def state_dict(self) -> dict:
        return {"prev": self.prev}

    def load_state_dict(self, d: dict) -> None:
        self.prev = d.get("prev")
