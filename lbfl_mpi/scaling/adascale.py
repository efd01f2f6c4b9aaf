"""AdaScale SGD (Johnson, Agrawal, Gu & Guestrin, ICML 2020, "AdaScale SGD: A User-Friendly Algorithm
for Distributed Training", Algorithm 1), on the noise-scale estimates of :mod:`.noise_scale`.

With S = B / B0 the scale of the global batch B over the base batch B0 (``train.base_batch``), sigma^2
the variance of a B0-sample gradient (tr(Sigma) / B0, Sigma the per-sample covariance) and G the true
gradient, each step t:

    1. gain        r_t = (sigma^2 + |G|^2) / (sigma^2 / S + |G|^2)
                       = (tr/B0 + |G|^2) / (tr/B + |G|^2),   1 <= r_t <= S for S >= 1
    2. lr          eta_t = r_t * lr(tau_t), the base schedule (warm-up, cosine) read at tau_t
    3. progress    tau_{t+1} = tau_t + r_t
    4. end         training stops once tau reaches ``train.steps``: the schedule and the run's length
                   are those of the base batch B0, in scale-invariant iterations

|G|^2 and tr(Sigma) are the EMAs of McCandlish et al.'s two-batch estimates, summed over layers:
under BSP free from the gradient exchange, on one rank from micro-batches. Before the first estimate
r_t = 1. The gain is computed in float64 from the estimates, which every rank holds identically under
BSP (they come from the summed statistics), so every rank takes the same lr and stops at the same step.

This differs from ``scaling.method = gain`` (noise_scale.py), which multiplies each layer's gradient
by sqrt((|G_l|^2 + tr_l/b_s) / (|G_l|^2 + tr_l/B)): a square root of a per-layer AdaScale gain for a
target small batch, applied to the gradient rather than the learning rate, with no progress counter.
"""
from __future__ import annotations

import math

import torch

from .noise_scale import NoiseScale


def adascale_gain(g2: float, tr: float, b_base: float, b_large: float) -> float:
    """Step 1: r = (tr/B0 + |G|^2) / (tr/B + |G|^2); noisy estimates are clipped (|G|^2 > 0, tr >= 0)."""
    g2 = max(float(g2), 1e-30)
    tr = max(float(tr), 0.0)
    return (tr / b_base + g2) / (tr / b_large + g2)


class AdaScale:
    """The progress counter tau and the gain of the current step (steps 1-4 of the module docstring)."""

    def __init__(self, b_base: int, total: int):
        self.b_base, self.total = float(b_base), float(total)
        self.tau = 0.0
        self.gain = 1.0

    def update(self, noise: NoiseScale, b_large: float) -> float:
        """Step 1 from the noise-scale estimates (after this step's update); returns r_t."""
        if noise.ready:
            g2, tr = noise._corrected()
            self.gain = adascale_gain(float(g2.sum()), float(tr.sum()), self.b_base, float(b_large))
        else:
            self.gain = 1.0
        return self.gain

    def advance(self) -> None:
        """Step 3, after the update that used r_t."""
        self.tau += self.gain

    @property
    def finished(self) -> bool:
        """Step 4: tau has reached train.steps (identical on every rank under BSP)."""
        return self.tau >= self.total

    def state_dict(self) -> dict:
        return {"tau": torch.tensor(self.tau, dtype=torch.float64), "gain": self.gain}

    def load_state_dict(self, d: dict) -> None:
        self.tau, self.gain = float(d["tau"]), float(d["gain"])
        if not math.isfinite(self.tau):
            raise ValueError(f"AdaScale progress {self.tau} in the checkpoint is not finite")
