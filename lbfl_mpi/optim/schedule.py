"""The learning-rate schedule: linear scaling rule with warm-up (Goyal et al. 2017), constant or cosine."""
from __future__ import annotations

import math

import torch


def lr_at(tc, step: float, global_batch: int) -> float:
    """Learning rate for 0-based ``step`` (a float: AdaScale reads the schedule at its progress tau).

    base = lr * B / base_batch with ``scale_lr`` (linear scaling rule), else lr; linear warm-up
    base * (step + 1) / warmup_steps; then constant or cosine decay to 0 at ``train.steps``.
    """
    base = tc.lr * (global_batch / tc.base_batch if tc.scale_lr else 1.0)
    if step < tc.warmup_steps:
        return base * (step + 1) / tc.warmup_steps
    if tc.schedule == "cosine":
        span = max(1, tc.steps - tc.warmup_steps)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - tc.warmup_steps) / span)))
    return base


def set_lr_(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
