"""Compute and step-time model of paper Eq. 2: t_step = t_c + t_mov + [i % H == 0] * t_sync.

What is measured and what is modelled:

- ``t_c`` (forward + backward + optimizer step) and ``t_mov`` are *measured* at a few probe batch
  sizes by :func:`time_steps` (medians after warm-up). ``t_mov`` is the time a ``fetch(b)`` callable
  takes to hand over a batch on the device: ``lbfl plan`` passes the trainer's own loader and
  host-to-device copy (plan/loader_feed.py); without one, a random host tensor's copy (a
  ``clone()`` on CPU) stands in, which sees no data pipeline at all;
- both are *modelled* as lines, ``t_c = alpha + beta * b`` and ``t_mov = gamma + delta * b``,
  fitted by least squares (:func:`fit_compute`);
- ``t_sync`` is *modelled* analytically for a ring allreduce (:func:`ring_allreduce_time`) or
  supplied by the caller (``lbfl plan`` measures it, plan/sync_time.py);
  :meth:`ComputeModel.epoch_time` applies Eq. 2 over the ``D / B`` iterations of an epoch
  (plan/eq2.py, which also picks the batch minimising it from measured tables).

The batch where throughput saturates (the knee, :meth:`ComputeModel.recommended_batch`) is chosen
from the measured probes, not the fitted line: a line's throughput ``b / (alpha + beta * b)`` only
approaches ``1 / beta`` asymptotically and has no knee of its own.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..exchange.link import ring_allreduce_s
from .eq2 import epoch_time

__all__ = ["ComputeModel", "ComputeProbe", "fit_compute", "fit_from_probes", "ring_allreduce_time", "time_interleaved",
           "time_steps"]

KNEE_FRACTION = 0.95


@dataclass
class ComputeProbe:
    """Median measured ``t_c`` and ``t_mov`` (seconds) at one probe batch size."""

    batch: int
    t_compute: float
    t_mov: float

    @property
    def throughput(self) -> float:
        """Measured samples per second excluding synchronisation: ``b / (t_c + t_mov)``."""
        total = self.t_compute + self.t_mov
        return self.batch / total if total > 0 else math.inf


@dataclass
class ComputeModel:
    """Fitted lines ``t_c = alpha + beta * b`` and ``t_mov = gamma + delta * b`` plus their probes."""

    alpha: float
    beta: float
    gamma: float
    delta: float
    probes: list[ComputeProbe] = field(default_factory=list)

    def t_compute(self, b) -> float:
        """Modelled ``t_c(b)`` in seconds."""
        return self.alpha + self.beta * b

    def t_mov(self, b) -> float:
        """Modelled ``t_mov(b)`` in seconds."""
        return self.gamma + self.delta * b

    def throughput(self, b) -> float:
        """Modelled samples per second at batch ``b``: ``b / (t_c(b) + t_mov(b))``."""
        return b / (self.t_compute(b) + self.t_mov(b))

    def fit_errors(self) -> list[tuple[int, float]]:
        """``(b, relative error)`` of the modelled ``t_c`` against each probe's measured median."""
        return [(p.batch, abs(self.t_compute(p.batch) - p.t_compute) / p.t_compute if p.t_compute
                 else abs(self.t_compute(p.batch))) for p in self.probes]

    def epoch_time(self, b_per_client: int, world_size: int, dataset_size: int, t_sync: float,
                   period: int = 1) -> float:
        """Eq. 2 summed over one epoch of ``D / (world_size * b)`` iterations.

        Synchronisation happens once every ``period`` (H) steps, so its cost is amortised as
        ``t_sync / period`` per step; ``period = 1`` is BSP.
        """
        return epoch_time(b_per_client, self.t_compute(b_per_client), self.t_mov(b_per_client), t_sync, period,
                          dataset_size, world_size)

    def recommended_batch(self, max_batch: int | None = None) -> int:
        """The knee: smallest probed ``b`` whose measured throughput is at least 95 % of the best.

        With ``max_batch`` (e.g. from :meth:`MemoryModel.max_batch`) only probes ``b <= max_batch``
        compete; if every probe is larger, ``max_batch`` itself is returned since nothing measured fits.
        """
        candidates = [p for p in self.probes if max_batch is None or p.batch <= max_batch]
        if not candidates:
            if max_batch is None:
                raise ValueError("compute model has no probes")
            if max_batch < 1:
                raise ValueError(f"max_batch must be >= 1, got {max_batch}")
            return int(max_batch)
        best = max(p.throughput for p in candidates)
        return min(p.batch for p in candidates if p.throughput >= KNEE_FRACTION * best)


def ring_allreduce_time(nbytes: int, world_size: int, bandwidth_Bps: float, latency_s: float) -> float:
    """Modelled ``t_sync`` of a ring allreduce: ``2 (p-1)/p * n / bw + 2 (p-1) * latency``.

    Reduce-scatter and allgather each take ``p - 1`` rounds moving ``n / p`` bytes per rank; the
    formula is the emulated link's (:func:`lbfl_mpi.exchange.link.ring_allreduce_s`).
    """
    p = int(world_size)
    if p < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return ring_allreduce_s(nbytes, p, latency_s, bandwidth_Bps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: nn.Module, input_shape, num_classes: int, b: int, device, warmup: int = 2,
               repeats: int = 5, lr: float = 0.01, fetch=None) -> ComputeProbe:
    """Measure median ``t_c`` and ``t_mov`` of SGD training steps at batch ``b``.

    With ``fetch`` (``fetch(b) -> (x, y)`` on ``device``, e.g. :class:`~.loader_feed.LoaderFeed`),
    ``t_mov`` is the time of that call and the step trains on what it returns. Without it a fresh
    random batch is drawn on the host for every step (no step reuses a cached input) and ``t_mov``
    is its host-to-device copy; on a CPU device ``.to()`` is a no-op, so a ``clone()`` of the batch
    stands in for the copy. Steps run on a deep copy of ``model`` so the caller's weights are
    unchanged.
    """
    if b < 1 or repeats < 1 or warmup < 0:
        raise ValueError("need b >= 1, repeats >= 1 and warmup >= 0")
    device = torch.device(device)
    work = copy.deepcopy(model).to(device)
    work.train()
    opt = torch.optim.SGD(work.parameters(), lr=lr)
    t_c, t_m = [], []
    for i in range(warmup + repeats):
        if fetch is None:
            x_host = torch.randn(b, *input_shape)
            y_host = torch.randint(0, num_classes, (b,))
        _sync(device)
        t0 = time.perf_counter()
        if fetch is not None:
            x, y = fetch(b)
        elif device.type == "cpu":
            x, y = x_host.clone(), y_host.clone()
        else:
            x, y = x_host.to(device), y_host.to(device)
        _sync(device)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(work(x), y).backward()
        opt.step()
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            t_m.append(t1 - t0)
            t_c.append(t2 - t1)
    return ComputeProbe(int(b), float(statistics.median(t_c)), float(statistics.median(t_m)))


def fit_line(xs, ys, relative: bool = False) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)``; a single probe gives a line through the origin.

    ``relative=True`` minimises the relative residuals ``(y_i - fit_i) / y_i`` instead of the absolute
    ones, so that small-batch probes (milliseconds) count as much as large ones (seconds); this is
    the error the plan reports per probe.
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if len(set(xs.tolist())) < 2:
        return 0.0, float(ys.mean() / xs.mean()) if xs.mean() else 0.0
    w = None
    if relative and np.all(ys > 0):
        w = 1.0 / ys
    slope, intercept = np.polyfit(xs, ys, 1, w=w)
    return float(intercept), float(slope)


def fit_from_probes(probes: list[ComputeProbe]) -> ComputeModel:
    """Fit both lines to already measured probes, minimising relative residuals."""
    if not probes:
        raise ValueError("need at least one probe")
    bs = [p.batch for p in probes]
    alpha, beta = fit_line(bs, [p.t_compute for p in probes], relative=True)
    gamma, delta = fit_line(bs, [p.t_mov for p in probes], relative=True)
    return ComputeModel(alpha, beta, gamma, delta, list(probes))


def time_interleaved(model: nn.Module, input_shape, num_classes: int, batches, device, rounds: int = 3,
                     warmup: int = 1, repeats: int = 3, fetch=None) -> dict[int, ComputeProbe]:
    """:func:`time_steps` at every batch size, ``rounds`` times in round-robin order, and the median of
    each size's rounds. A slow drift of the machine's speed (another job, clock changes) then spreads
    over all sizes instead of biasing the sizes timed while it lasted. ``fetch``: as for
    :func:`time_steps`; ``rounds * (warmup + repeats)`` batches are drawn from it per size."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    runs: dict[int, list[ComputeProbe]] = {int(b): [] for b in batches}
    for _ in range(rounds):
        for b in runs:
            runs[b].append(time_steps(model, input_shape, num_classes, b, device, warmup=warmup, repeats=repeats,
                                      fetch=fetch))
    return {b: ComputeProbe(b, float(statistics.median(p.t_compute for p in ps)),
                            float(statistics.median(p.t_mov for p in ps))) for b, ps in runs.items()}


def fit_compute(model: nn.Module, input_shape, num_classes: int, device,
                probe_batches=(1, 2, 4, 8, 16, 32), rounds: int = 3, repeats: int = 3) -> ComputeModel:
    """Measure :func:`time_interleaved` at each probe batch and fit the ``t_c`` and ``t_mov`` lines."""
    if not probe_batches:
        raise ValueError("probe_batches is empty")
    timed = time_interleaved(model, input_shape, num_classes, probe_batches, device, rounds=rounds,
                             repeats=repeats)
    return fit_from_probes([timed[int(b)] for b in probe_batches])
