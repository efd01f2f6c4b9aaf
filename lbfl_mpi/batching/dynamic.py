"""Heterogeneity-aware batch allocation (OmniLearn-style; Tyagi 2025, Sec. on heterogeneity).

Each client gets a batch proportional to its measured throughput, keeping the global batch fixed, so
that fast clients stop waiting for slow ones:

1. ideal b_i = G * s_i / sum_j s_j      (s_i: smoothed samples/s of client i, G: global batch)
2. clamp every b_i to [min_i, max_i]; give what clamping freed or took to the unclamped clients, in
   proportion to their throughput, until no bound is violated (water-filling)
3. round to integers with sum exactly G (largest remainders first, bounds kept)
4. keep the current allocation when no client would change by more than the deadband (relative)
"""
from __future__ import annotations

import math

import numpy as np


def allocate(throughputs: list[float], global_batch: int, min_batch: int | list[int],
             max_batch: list[int | None] | None = None) -> list[int]:
    """Integer batch sizes proportional to ``throughputs`` with sum ``global_batch`` within bounds."""
    n = len(throughputs)
    lo = [min_batch] * n if isinstance(min_batch, int) else list(min_batch)
    hi = [math.inf if m is None else m for m in (max_batch or [None] * n)]
    if any(not (t > 0 and math.isfinite(t)) for t in throughputs):
        raise ValueError(f"throughputs must be positive and finite, got {throughputs}")
    if sum(lo) > global_batch:
        raise ValueError(f"global batch {global_batch} < sum of minimum batches {sum(lo)}")
    if sum(hi) < global_batch:
        raise ValueError(f"global batch {global_batch} > sum of maximum batches {sum(hi)}")
    share = [0.0] * n
    free = set(range(n))
    remaining = float(global_batch)
    while free:
        total = sum(throughputs[i] for i in free)
        ideal = {i: remaining * throughputs[i] / total for i in free}
        low = {i for i in free if ideal[i] < lo[i]}
        high = {i for i in free if ideal[i] > hi[i]}
        # pin the side that violates more; pinning both at once could overshoot the budget
        pin = low if sum(lo[i] - ideal[i] for i in low) >= sum(ideal[i] - hi[i] for i in high) else high
        if not pin:
            for i in free:
                share[i] = ideal[i]
            break
        for i in pin:
            share[i] = lo[i] if i in low else hi[i]
            remaining -= share[i]
        free -= pin
    out = [min(hi[i], max(lo[i], math.floor(share[i]))) for i in range(n)]
    short = global_batch - sum(out)
    order = sorted(range(n), key=lambda i: share[i] - math.floor(share[i]), reverse=True)
    while short > 0:  # largest remainders first, never past a bound
        for i in order:
            if short and out[i] < hi[i]:
                out[i] += 1
                short -= 1
    return [int(b) for b in out]


def apply_deadband(current: list[int], proposed: list[int], deadband: float) -> list[int]:
    """``proposed`` if any client's batch changes by more than ``deadband`` (relative), else ``current``."""
    if any(abs(p - c) > deadband * c for c, p in zip(current, proposed)):
        return list(proposed)
    return list(current)


class DynamicBatcher:
    """Every ``interval`` steps: smooth this rank's compute throughput (EWMA), allgather it, and
    re-allocate the batches (``allocate`` + ``apply_deadband``). Every rank computes the same
    allocation from the same gathered numbers at the same step, so collectives never disagree."""

    def __init__(self, bcfg, world_size: int, global_batch: int):
        self.interval, self.deadband, self.ewma = bcfg.interval, bcfg.deadband, bcfg.ewma
        self.min_batch = bcfg.min_batch
        self.max_batch = [bcfg.max_batch or None] * world_size
        self.global_batch = global_batch
        self.sizes = allocate([1.0] * world_size, global_batch, self.min_batch, self.max_batch)
        self.smoothed: float | None = None
        self.samples, self.busy = 0, 0.0
        self.changes = 0

    def set_max_batch(self, max_batch: list[int | None]) -> None:
        """Per-rank upper bounds (e.g. each device's planned largest permissible batch); the current
        allocation is recomputed within them."""
        self.max_batch = list(max_batch)
        self.sizes = allocate([1.0] * len(self.max_batch), self.global_batch, self.min_batch, self.max_batch)

    def observe(self, samples: int, busy_seconds: float) -> None:
        """Record one step: samples computed and the time spent computing them (incl. slowdown)."""
        self.samples += samples
        self.busy += busy_seconds

    adaptive = False  # the global batch is fixed (batching/adaptive.py moves it)

    def maybe_reallocate(self, step: int, comm, phi: float = math.nan) -> list[int] | None:
        """At the end of step ``step``: every ``interval`` steps, collectively, re-allocate; returns the
        new sizes when they change (None otherwise, and on the steps in between)."""
        if (step + 1) % self.interval:
            return None
        self.smooth()
        # through the data plane (float64 keeps the Python float exactly): every rank the same numbers
        rates = [float(r) for r in comm.allgather_array(np.array([self.smoothed], dtype=np.float64))[:, 0]]
        proposed = allocate(rates, self.global_batch, self.min_batch, self.max_batch)
        return self.adopt(apply_deadband(self.sizes, proposed, self.deadband))

    def smooth(self) -> None:
        """This interval's samples/s into the EWMA; the counters start again."""
        rate = self.samples / max(self.busy, 1e-9)
        self.smoothed = rate if self.smoothed is None else self.ewma * rate + (1 - self.ewma) * self.smoothed
        self.samples, self.busy = 0, 0.0

    def adopt(self, new: list[int]) -> list[int] | None:
        """``new`` becomes the allocation; returned when it differs from the current one."""
        if new == self.sizes:
            return None
        self.sizes = new
        self.changes += 1
        return new

    def state_dict(self) -> dict:
        return {"sizes": self.sizes, "smoothed": self.smoothed, "samples": self.samples, "busy": self.busy,
                "changes": self.changes}

    def load_state_dict(self, d: dict) -> None:
        self.sizes, self.smoothed = list(d["sizes"]), d["smoothed"]
        self.samples, self.busy, self.changes = d["samples"], d["busy"], d["changes"]
