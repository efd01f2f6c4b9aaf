"""t_sync of Eq. 2 measured through the trainer's own synchroniser, for ``lbfl plan``.

Collective: every rank calls :func:`measure_t_sync` at the same point. Steps:

1. build the synchroniser ``sync.mode`` names (``lbfl_mpi.sync.build_sync``, the one the trainer
   builds) over a deep copy of the model, so the exchanged vector is the trainer's: BSP's gradients
   of the trainable parameters plus its statistics slots and weight slot, FedAvg's parameters plus
   float buffers, each through the exchange the config selects (one buffer, bucketed, top-k) on the
   data plane already started (``dist.backend``: MPI, NCCL or gloo);
2. run ``warmup + repeats`` synchronisations, each after a barrier so that every rank enters it
   together and the time is the collective's, not the wait for a late rank: BSP's ``sync_grads``,
   FedAvg's (and post-local SGD's local phase) model average through ``sync_params`` at a sync step;
3. each time is the ``"sync"`` laps of a :class:`~lbfl_mpi.telemetry.StepTimer`, the trainer's
   ``t_sync`` column; top-k selection is lapped as ``"compress"`` and reported apart;
4. every rank takes the median of its timed repetitions, and all ranks adopt the largest median
   (a synchronous step waits for the slowest rank), so the value is identical on every rank.

With one rank nothing is exchanged and ``t_sync = 0``. A bucketed exchange is timed after the
backward pass, without the overlap it gets in training, so its t_sync is an upper bound of the
exposed time.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field

import torch

__all__ = ["SyncTiming", "measure_t_sync"]


@dataclass
class SyncTiming:
    """Measured ``t_sync`` (seconds), agreed over ranks, with what was exchanged."""

    t_sync: float              # max over ranks of each rank's median sync time; 0 on one rank
    t_compress: float          # same for the compression laps (top-k selection); 0 without compression
    nbytes: int                # payload of one dense exchange of the synchronised vector (0 on one rank)
    numel: int                 # elements of that vector (fp32 model size + statistics and weight slots)
    exchange: str              # the exchange the trainer would use (dense, bucketed, topk, ...)
    backend: str               # the data plane (mpi, nccl, gloo)
    per_rank: list[float] = field(default_factory=list)  # each rank's median, rank order
    note: str = ""


def _one_sync(sync, mode: str, step: int, b: int):
    """One synchronisation as the trainer runs it at a sync step of ``mode``; its SyncResult."""
    if mode == "bsp":
        sync.begin_step(b)
        return sync.sync_grads(step, b)
    return sync.sync_params(step, b)  # fedavg, postlocal: a step at which the local phase averages the models


def measure_t_sync(cfg, comm, model: torch.nn.Module, device, batch: int = 1, warmup: int = 2,
                   repeats: int = 5) -> SyncTiming:
    """Collective: the median time of one synchronisation of ``model`` as configured (see module
    docstring), agreed over ranks. ``model`` is not modified."""
    if warmup < 0 or repeats < 1:
        raise ValueError("need warmup >= 0 and repeats >= 1")
    from ..sync import build_sync
    from ..telemetry import StepTimer

    device = torch.device(device)
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if comm.world_size == 1:
        return SyncTiming(0.0, 0.0, 0, numel, "none", comm.backend, [0.0],
                          "1 rank: nothing is exchanged, t_sync = 0")
    mode = cfg.sync.mode
    work = copy.deepcopy(model).to(device)
    for p in work.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)  # values do not matter to a dense exchange; top-k sees a spread
    sync = build_sync(cfg, comm, work)
    # a step index at which the scheme synchronises: any for BSP; the last of the first H local steps
    # for FedAvg, counted from switch_step for post-local SGD
    step = 0
    if mode != "bsp":
        step = (cfg.sync.switch_step if mode == "postlocal" else 0) + cfg.sync.period - 1
    timer = StepTimer(device)
    t_sync, t_comp = [], []
    for i in range(warmup + repeats):
        comm.barrier()
        timer.start()
        res = _one_sync(sync, mode, step, batch)
        timer.lap_split("sync", compress=res.t_compress)  # the exchange reports its compression time
        if i >= warmup:
            t_sync.append(timer.get("sync"))
            t_comp.append(timer.get("compress"))
    ex = (sync.local if mode == "postlocal" else sync).exchange  # the long-run phase's exchange
    if hasattr(ex, "close"):  # the bucketed exchange's gradient hooks on the copy
        ex.close()
    mine = (float(statistics.median(t_sync)), float(statistics.median(t_comp)))
    every = comm.allgather_obj(mine)
    return SyncTiming(max(s for s, _ in every), max(c for _, c in every), int(ex.nbytes), int(ex.flat.buf.numel()),
                      ex.name, comm.backend, [s for s, _ in every],
                      f"max over {comm.world_size} ranks of each rank's median of {repeats} synchronisations "
                      f"(after {warmup} warm-up)")
