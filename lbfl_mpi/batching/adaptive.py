"""The adaptive global batch (``batching.global_mode = adaptive``): every ``batching.interval`` steps
the global batch B moves to the goodput optimum of batching/goodput.py, and the heterogeneity-aware
allocation of batching/dynamic.py splits it over the ranks.

Per interval, at the same step on every rank (Pollux, Qiao et al., OSDI 2021, Sec. 3-4, without its
scheduler):

1. measure   each rank fits t = alpha m + beta b to its steps (m passes, b samples, t = t_data +
             t_compute + t_straggle; :class:`~.goodput.LinearFit`), and averages t_sync + t_compress
             per step and its samples/s over the interval
2. agree     one allgather of [samples/s, alpha, beta, t_sync per step, phi] (float64): every rank
             builds the same :class:`~.goodput.GoodputModel`, with t_sync the smallest rank's (the
             others' include waiting for the slowest) and phi the mean of the ranks' finite noise
             scales (identical under BSP, where it comes from the summed statistics)
3. choose    B* = argmax goodput over [global_min, global_max] (:meth:`~.goodput.GoodputModel.best`); without a
             noise-scale estimate yet, B stays
4. move      B <- B* unless it is within ``batching.deadband`` of B; the sizes are allocated for B,
             and a rank whose batch exceeds its Eq. 3 limit (``batching.plan_at_start``) accumulates
             it in micro-batches of that limit

The learning rate follows B through the configured rule: ``scaling.method = adascale`` (its gain
reads the summed batch), or ``train.scale_lr`` (lr x B / train.base_batch), or neither (constant).
"""
from __future__ import annotations

import math

import numpy as np

from .dynamic import DynamicBatcher, allocate, apply_deadband
from .goodput import GoodputModel, LinearFit, RankModel


class AdaptiveBatcher(DynamicBatcher):
    """DynamicBatcher whose global batch is chosen by goodput (steps 1-4 of the module docstring)."""

    adaptive = True

    def __init__(self, bcfg, world_size: int, global_batch: int):
        super().__init__(bcfg, world_size, global_batch)
        self.b0 = global_batch
        self.lo = bcfg.global_min or world_size * bcfg.min_batch
        self.hi = bcfg.global_max or 8 * global_batch
        self.caps: list[int | None] = [None] * world_size  # Eq. 3 limits: accumulation beyond them
        self.fit = LinearFit()
        self.t_sync_sum, self.steps = 0.0, 0
        self.goodput_pred = math.nan

    def set_max_batch(self, max_batch: list[int | None]) -> None:
        """The plan's largest permissible batches become accumulation limits, not allocation bounds."""
        self.caps = list(max_batch)

    def accumulate(self, rank: int) -> int:
        """Micro-batch size for ``rank``'s current batch: its Eq. 3 limit when the batch exceeds it."""
        cap = self.caps[rank]
        return cap if cap is not None and self.sizes[rank] > cap else 0

    def observe_step(self, passes: int, samples: int, seconds: float, t_sync: float) -> None:
        """Step 1 for one step of this rank."""
        self.fit.observe(max(passes, 1), samples, seconds)
        self.t_sync_sum += t_sync
        self.steps += 1

    def model(self, rows: np.ndarray) -> GoodputModel | None:
        """Step 2 from the gathered rows [rate, alpha, beta, t_sync, phi] (None: nothing to model)."""
        phis = rows[:, 4][np.isfinite(rows[:, 4])]
        if not len(phis) or not np.isfinite(rows[:, :4]).all() or (rows[:, 2] <= 0).any():
            return None
        ranks = tuple(RankModel(float(a), float(b), c) for a, b, c in zip(rows[:, 1], rows[:, 2], self.caps))
        return GoodputModel(ranks, tuple(float(r) for r in rows[:, 0]), t_sync=float(rows[:, 3].min()),
                            phi=max(float(phis.mean()), 0.0), b0=float(self.b0), min_batch=self.min_batch,
                            max_batch=tuple(self.max_batch))

    def maybe_reallocate(self, step: int, comm, phi: float = math.nan) -> list[int] | None:
        """Steps 1-4 every ``interval`` steps (collective); returns the new sizes when they change."""
        if (step + 1) % self.interval:
            return None
        self.smooth()
        alpha, beta = self.fit.fit()
        t_sync = self.t_sync_sum / max(self.steps, 1)
        self.t_sync_sum, self.steps = 0.0, 0
        mine = np.array([self.smoothed, alpha, beta, t_sync, phi], dtype=np.float64)
        gm = self.model(comm.allgather_array(mine))
        if gm is None:
            return None
        best = gm.best(self.lo, self.hi)
        b = self.global_batch if abs(best - self.global_batch) <= self.deadband * self.global_batch else best
        self.goodput_pred = gm.goodput(b)
        proposed = allocate(list(gm.rates), b, self.min_batch, self.max_batch)
        new = proposed if b != self.global_batch else apply_deadband(self.sizes, proposed, self.deadband)
        self.global_batch = b
        return self.adopt(new)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "global_batch": self.global_batch, "fit": self.fit.state_dict(),
                "t_sync_sum": self.t_sync_sum, "steps": self.steps, "goodput_pred": self.goodput_pred}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.global_batch = int(d["global_batch"])
        self.fit.load_state_dict(d["fit"])
        self.t_sync_sum, self.steps, self.goodput_pred = d["t_sync_sum"], d["steps"], d["goodput_pred"]
