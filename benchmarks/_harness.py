"""Timing helpers shared by the ``benchmarks/bench_*.py`` scripts (imported by name: benchmarks/ is
on ``sys.path`` when a script in it runs).

- :func:`sync`: wait for the device's queued work (CUDA), so that a clock read sees finished work;
- :func:`timed`: seconds of one call, the device synchronised on both sides, optionally with all
  ranks starting together;
- :func:`interleave`: per-call seconds of several variants, warmed up, then timed in rounds of each
  variant in turn, so that drift of a shared machine hits all alike;
- :func:`medians`, :func:`slowest_median`, :func:`median_time`: the numbers the reports print.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


def sync(device: torch.device | None) -> None:
    """Block until the work queued on ``device`` has finished (a no-op on CPU and for ``None``)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class SelfTimed:
    """What a callable returns to :func:`timed` when it timed itself, to leave its set-up out."""

    seconds: float


def timed(fn, device: torch.device | None = None, comm=None) -> float:
    """Seconds of ``fn()``, the device synchronised before and after; with ``comm`` (a
    ``lbfl_mpi.comm.world.Comm``) a barrier first, so that all ranks start together. A ``fn`` that
    returns :class:`SelfTimed` is taken at its word (its own seconds, not the clock's)."""
    cuda = device is not None and device.type == "cuda"  # decided once: nothing else inside the clock reads
    if cuda:
        torch.cuda.synchronize(device)
    if comm is not None:
        comm.barrier()
    t0 = time.perf_counter()
    inner = fn()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return inner.seconds if isinstance(inner, SelfTimed) else elapsed


def interleave(variants: dict, steps: int, warmup: int, round_: int, device, comm=None, after=None
               ) -> dict[str, list[float]]:
    """Per-step seconds of each variant: ``warmup`` untimed steps each, then rounds of ``round_`` timed
    steps of each variant in turn until every one has ``steps``. ``after[name]()`` runs (untimed) after
    each timed step of ``name``. Every rank runs the same sequence (collectives stay matched)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in variants}
    while any(len(t) < steps for t in times.values()):
        for name, fn in variants.items():
            for _ in range(min(round_, steps - len(times[name]))):
                times[name].append(timed(fn, device, comm))
                if after and name in after:
                    after[name]()
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """``{name: median of its seconds}`` (this rank's own times)."""
    return {k: statistics.median(v) for k, v in times.items()}


def slowest_median(times: list[float], comm) -> float:
    """Median over steps of the slowest rank's time (a collective step ends when the last rank does).
    A collective: every rank calls it with as many times."""
    per_rank = comm.allgather_obj(times)
    return statistics.median(max(ts) for ts in zip(*per_rank))


def median_time(fn, comm, reps: int, device) -> float:
    """Median over ``reps`` calls of the slowest rank's seconds of ``fn()``, after one untimed warm-up
    call; every call starts after a barrier, the device synchronised around it."""
    times = interleave({"fn": fn}, reps, 1, reps, device, comm)["fn"]
    return slowest_median(times, comm)
