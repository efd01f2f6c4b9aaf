"""Goodput of a global batch: the model the adaptive global batch maximises (batching.global_mode =
adaptive; Pollux, Qiao et al., OSDI 2021, Eq. 2-5 there; this paper's Eq. 2 and Eq. 3).

For a global batch B split over ranks i = 1..p:

1. allocation   b_i(B) = allocate(s, B): proportional to the ranks' measured throughputs s_i, within
                [min_batch, max_batch], summing to B (batching/dynamic.py: the heterogeneity-aware
                allocation)
2. rank time    t_i(b) = alpha_i m_i(b) + beta_i b,  m_i(b) = ceil(b / cap_i) micro-batches when b
                exceeds the rank's Eq. 3 limit cap_i (gradient accumulation), else 1: each pass pays
                alpha_i, each sample beta_i (fitted online, :class:`LinearFit`)
3. step time    t(B) = max_i t_i(b_i(B)) + t_sync: the slowest rank sets the step (Eq. 2, with t_sync
                the measured per-step synchronisation: t_sync / H under FedAvg)
4. throughput   X(B) = B / t(B)
5. efficiency   E(B) = (phi + B0) / (phi + B), phi the gradient noise scale B_simple
                (McCandlish et al. 2018) and B0 the starting batch: the samples a step of B0 is
                worth, per sample, relative to B (Pollux's form)
6. goodput      G(B) = X(B) E(B)

:meth:`GoodputModel.best` takes the argmax over every integer of [B_min, B_max] at once
(:meth:`GoodputModel.goodput_all`, the allocation's rounding vectorised; tested equal to the scalar
model at every batch). The steps are sawtooth where a rank's batch crosses a multiple of its Eq. 3
limit (one more pass), so goodput is not unimodal in B and a coarse search would miss such maxima.
Ranges above ``EXACT_RANGE`` integers use a geometric grid (64 points per octave) refined between
the best point's neighbours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dynamic import allocate

GRID_PER_OCTAVE = 64
EXACT_RANGE = 200_000


def efficiency(phi: float, b0: float, b: float) -> float:
    """Step 5: (phi + B0) / (phi + B)."""
    return (phi + b0) / (phi + b)


@dataclass(frozen=True)
class RankModel:
    """Step 2 for one rank."""

    alpha: float          # seconds per pass (forward + backward of one micro-batch)
    beta: float           # seconds per sample
    cap: int | None = None  # the Eq. 3 limit: larger batches run as ceil(b / cap) micro-batches

    def passes(self, b: int) -> int:
        return 1 if self.cap is None or b <= self.cap else math.ceil(b / self.cap)

    def time(self, b: int) -> float:
        return self.alpha * self.passes(b) + self.beta * b


@dataclass(frozen=True)
class GoodputModel:
    """Steps 1-6 from what the ranks measured (identical on every rank: it comes from one allgather)."""

    ranks: tuple[RankModel, ...]
    rates: tuple[float, ...]      # samples/s per rank, the allocation's weights
    t_sync: float                 # seconds per step
    phi: float                    # noise scale B_simple
    b0: float                     # the starting global batch
    min_batch: int = 1
    max_batch: tuple[int | None, ...] | None = None

    def sizes(self, b: int) -> list[int]:
        return allocate(list(self.rates), b, self.min_batch, list(self.max_batch) if self.max_batch else None)

    def step_time(self, b: int) -> float:
        return max(m.time(bi) for m, bi in zip(self.ranks, self.sizes(b))) + self.t_sync

    def goodput(self, b: int) -> float:
        return b / self.step_time(b) * efficiency(self.phi, self.b0, b)

    def sizes_all(self, lo: int, hi: int) -> np.ndarray:
        """[hi - lo + 1, p] integer allocations of every B in [lo, hi]: allocate()'s proportional shares,
        floors and largest remainders (ties to the lower rank) vectorised; rows where a bound binds go
        through allocate() itself."""
        b = np.arange(lo, hi + 1, dtype=np.int64)
        s = np.asarray(self.rates, dtype=np.float64)
        total = sum(self.rates)  # Python's sum, in rank order, as allocate() adds them
        share = b.astype(np.float64)[:, None] * s[None, :] / total
        out = np.floor(share)
        rem = share - out
        out = out.astype(np.int64)
        short = b - out.sum(1)
        order = np.argsort(-rem, axis=1, kind="stable")
        pos = np.empty_like(order)
        np.put_along_axis(pos, order, np.broadcast_to(np.arange(s.size), order.shape), axis=1)
        out += pos < short[:, None]
        hi_b = np.array([np.inf if m is None else m for m in (self.max_batch or [None] * s.size)])
        for j in np.nonzero((share < self.min_batch).any(1) | (share > hi_b).any(1))[0]:
            out[j] = self.sizes(int(b[j]))
        return out

    def goodput_all(self, lo: int, hi: int) -> np.ndarray:
        """goodput(B) for every B in [lo, hi] (steps 1-6 on arrays)."""
        sizes = self.sizes_all(lo, hi)
        alpha = np.array([m.alpha for m in self.ranks])
        beta = np.array([m.beta for m in self.ranks])
        cap = np.array([m.cap or 0 for m in self.ranks], dtype=np.int64)
        passes = np.where((cap > 0) & (sizes > cap), -(-sizes // np.maximum(cap, 1)), 1)
        t = (alpha * passes + beta * sizes).max(1) + self.t_sync
        b = np.arange(lo, hi + 1, dtype=np.float64)
        return b / t * efficiency(self.phi, self.b0, b)

    def best(self, lo: int, hi: int) -> int:
        """argmax of goodput over the integers of [lo, hi] (the smallest B among ties)."""
        if hi - lo <= EXACT_RANGE:
            return lo + int(np.argmax(self.goodput_all(lo, hi)))
        return choose(lo, hi, self.goodput)


def grid(lo: int, hi: int, per_octave: int = GRID_PER_OCTAVE) -> list[int]:
    """lo, lo 2^(1/k), lo 2^(2/k), ..., hi rounded to integers (sorted, unique, ends included)."""
    if lo > hi:
        raise ValueError(f"empty batch range [{lo}, {hi}]")
    n = int(math.floor(per_octave * math.log2(hi / lo))) if hi > lo else 0
    pts = {lo, hi} | {int(round(lo * 2 ** (j / per_octave))) for j in range(n + 1)}
    return sorted(p for p in pts if lo <= p <= hi)


def choose(lo: int, hi: int, f) -> int:
    """The integer B in [lo, hi] maximising ``f``: the grid's best point, then every integer between
    its grid neighbours (the smallest B among ties)."""
    pts = grid(lo, hi)
    vals = [f(b) for b in pts]
    j = max(range(len(pts)), key=lambda i: (vals[i], -pts[i]))
    a, z = pts[max(j - 1, 0)], pts[min(j + 1, len(pts) - 1)]
    return max(range(a, z + 1), key=lambda b: (f(b), -b))


class LinearFit:
    """t = alpha m + beta b by least squares over (m passes, b samples, t seconds) observations, each
    older observation's weight multiplied by ``forget`` per new one. Where the observations cannot
    separate alpha from beta (every step at one batch size and one pass), alpha = 0 and beta = the
    mean seconds per sample: a throughput flat in the batch, until other batch sizes are seen."""

    def __init__(self, forget: float = 0.98):
        self.forget = forget
        self.s = [0.0] * 5  # sum w m^2, sum w m b, sum w b^2, sum w m t, sum w b t

    def observe(self, m: int, b: int, t: float) -> None:
        f = self.forget
        for k, v in enumerate((m * m, m * b, b * b, m * t, b * t)):
            self.s[k] = f * self.s[k] + v

    def seed(self, alpha: float, beta: float, batches: list[int]) -> None:
        """Pseudo-observations of a known model (the plan's probes), one pass each."""
        for b in batches:
            self.observe(1, b, alpha + beta * b)

    @property
    def ready(self) -> bool:
        return self.s[2] > 0

    def fit(self) -> tuple[float, float]:
        """(alpha, beta), alpha >= 0 and beta > 0."""
        mm, mb, bb, mt, bt = self.s
        if bb <= 0:
            return math.nan, math.nan
        det = mm * bb - mb * mb
        if det > 1e-9 * mm * bb:
            alpha = (bb * mt - mb * bt) / det
            beta = (mm * bt - mb * mt) / det
            if alpha >= 0 and beta > 0:
                return alpha, beta
        return 0.0, bt / bb

    def state_dict(self) -> dict:
        return {"s": list(self.s)}

    def load_state_dict(self, d: dict) -> None:
        self.s = [float(v) for v in d["s"]]
