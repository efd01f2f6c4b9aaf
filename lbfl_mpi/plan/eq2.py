"""Batch choice by paper Eq. 2 (Tyagi 2025): the per-client batch that minimises the epoch time.

Eq. 2 gives the time of step i as ``t_c + t_mov + [i % H == 0] * t_sync``; an epoch is ``D / B``
steps with ``B = sum_c b_c`` the global batch (``world_size * b`` when every client takes ``b``).
Averaged over the H steps between synchronisations, the epoch time is

    T_epoch(b) = D / B * (t_c(b) + t_mov(b) + t_sync / H)

with H = 1 for BSP (gradients every step) and H = ``sync.period`` for FedAvg (model average every H
local steps; post-local SGD after its switch). ``t_sync`` does not depend on ``b``: the exchanged
vector has the model's size. Its share per sample, ``t_sync / (H b)``, shrinks as b grows, so the
Eq. 2 optimum can sit far above the throughput knee (``ComputeModel.recommended_batch``), which
looks at ``b / (t_c + t_mov)`` only and ignores synchronisation.

The functions here are pure: they take the measured tables (``lbfl plan`` measures ``t_c`` and
``t_mov`` per probe batch and ``t_sync`` once) and do no timing.
"""
from __future__ import annotations

import math

__all__ = ["epoch_time", "epoch_times", "eq2_optimum", "sync_period"]


def sync_period(mode: str, period: int) -> int:
    """H of Eq. 2: 1 for ``bsp``; ``period`` for ``fedavg`` and for ``postlocal`` (whose long-run
    phase, after ``sync.switch_step``, is FedAvg)."""
    if mode == "bsp":
        return 1
    if mode in ("fedavg", "postlocal"):
        if int(period) < 1:
            raise ValueError(f"sync.period must be >= 1, got {period}")
        return int(period)
    raise ValueError(f"sync.mode={mode!r}: expected bsp, fedavg or postlocal")


def epoch_time(b: int, t_c: float, t_mov: float, t_sync: float, period: int, dataset_size: int,
               world_size: int) -> float:
    """``D / B * (t_c + t_mov + t_sync / H)`` seconds with ``B = world_size * b`` (Eq. 2 over one epoch)."""
    if b < 1 or world_size < 1 or period < 1:
        raise ValueError("b, world_size and period must be >= 1")
    return dataset_size / (world_size * b) * (t_c + t_mov + t_sync / period)


def epoch_times(batches, t_c, t_mov, t_sync: float, period: int, dataset_size: int,
                world_size: int) -> list[float]:
    """:func:`epoch_time` for each ``batches[i]`` with the measured ``t_c[i]`` and ``t_mov[i]``."""
    if not len(batches) == len(t_c) == len(t_mov):
        raise ValueError(f"tables differ in length: {len(batches)} batches, {len(t_c)} t_c, {len(t_mov)} t_mov")
    return [epoch_time(int(b), float(c), float(m), t_sync, period, dataset_size, world_size)
            for b, c, m in zip(batches, t_c, t_mov)]


def eq2_optimum(batches, t_c, t_mov, t_sync: float, period: int, dataset_size: int, world_size: int,
                max_batch: int | None = None) -> tuple[int, float]:
    """``(b, T_epoch(b))`` minimising :func:`epoch_time` over the measured ``batches`` that fit
    (``b <= max_batch``); ties go to the smaller b.

    When no measured batch fits, ``(max_batch, nan)`` is returned: the largest permissible batch,
    unmeasured, as :meth:`ComputeModel.recommended_batch` does for the knee.
    """
    times = epoch_times(batches, t_c, t_mov, t_sync, period, dataset_size, world_size)
    fits = [(t, int(b)) for b, t in zip(batches, times) if max_batch is None or b <= max_batch]
    if not fits:
        if max_batch is None:
            raise ValueError("no batch sizes given")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        return int(max_batch), math.nan
    t, b = min(fits)
    return b, t
