"""Top-k compressed synchronisation (Tyagi 2025, Eq. 9) for BSP and FedAvg.

BSP: each rank compresses its gradient (with error feedback, compress/topk.py) and sends
(b_c * values, int32 indices) with one MPI_Allgatherv; every rank scatter-adds all ranks' values
into a dense buffer (index_add_, so indices chosen by several ranks add up) and divides by sum b_c:
the dense weighted average of the compressed gradients.

FedAvg: at each average, the model delta since the last average (parameters and float buffers) is
compressed with its own error feedback and exchanged the same way, weighted by samples; every rank
applies anchor + averaged delta, so all end the sync with identical models.

Crossover: an allgather of k entries (8 bytes each) from p ranks moves (p-1) 8k bytes into each rank,
a ring allreduce 2 (p-1)/p 4n; the sparse exchange is larger when density * p > 1. Then the
compressed vector is sent densely through the allreduce (same result, fewer bytes).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from ..compress.topk import TopKCompressor
from .base import SyncResult
from .bsp import BSPSync
from .fedavg import FedAvgSync

HEADER_BYTES = 16  # per-rank [k, weight] as two float64, gathered before the payload


def _lap(timer, name: str) -> None:
    if timer is not None:
        timer.lap(name)


def sparse_average(comm, values: torch.Tensor, idx: torch.Tensor, weight: float, numel: int,
                   timer=None, out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Dense sum_c w_c C_c / sum_c w_c from every rank's (values, indices); returns (dense, bytes sent).

    ``out`` (numel float32, overwritten) avoids allocating a fresh dense vector per call, which on CPU
    cost more than the whole exchange (page faults; benchmarks/results/*bench_topk.md).
    """
    k = int(idx.numel())
    payload = torch.empty(2 * k, dtype=torch.float32, device=values.device)
    torch.mul(values, weight, out=payload[:k])
    payload[k:] = idx.to(torch.int32).view(torch.float32)  # indices travel bit-exact in the same buffer
    _lap(timer, "compress")
    comm.arrive()
    heads = comm.allgather_array(np.array([k, weight], dtype=np.float64))  # [p, 2]
    counts = [2 * int(h[0]) for h in heads]
    recv = comm.allgatherv(payload, counts)
    _lap(timer, "sync")
    vals, inds, off = [], [], 0
    for c in counts:
        kr = c // 2
        vals.append(recv[off:off + kr])
        inds.append(recv[off + kr:off + c].view(torch.int32))
        off += c
    total = float(heads[:, 1].sum())
    if total <= 0:
        raise RuntimeError(f"sparse average with total weight {total}: no rank contributed samples")
    dense = torch.zeros(numel, dtype=torch.float32, device=values.device) if out is None else out.zero_()
    # one index_add_ per rank, in rank order: within a rank the indices are unique, so even CUDA's
    # atomic adds give every rank the same bits (one call over all ranks' duplicates would not);
    # dividing the k gathered values is cheaper than dividing the n-entry result
    for v, i in zip(vals, inds):
        dense.index_add_(0, i.long(), v / total)
    _lap(timer, "compress")
    return dense, (HEADER_BYTES + payload.numel() * payload.element_size()) if comm.world_size > 1 else 0


def dense_exchange_(comm, flat, values: torch.Tensor, idx: torch.Tensor, weight: float, timer=None) -> int:
    """Crossover path: the compressed vector, scattered into ``flat`` with its weight, goes through the
    dense allreduce; ``flat.buf`` then holds the weighted sum and the total weight. Returns bytes sent."""
    flat.body.zero_()
    flat.body[idx] = values * weight
    flat.buf[-1] = weight
    _lap(timer, "compress")
    comm.allreduce_(flat.buf)
    _lap(timer, "sync")
    return flat.nbytes if comm.world_size > 1 else 0


def uses_dense_exchange(density: float, world_size: int) -> bool:
    """Crossover rule from the module docstring."""
    return density * world_size > 1


def _announce_crossover(comm, what: str, density: float) -> None:
    if comm.rank == 0:
        print(f"lbfl: compress.density={density} x {comm.world_size} ranks > 1: a sparse exchange of the "
              f"{what} would exceed a dense allreduce; sending the compressed {what} densely",
              file=sys.stderr, flush=True)


class SparseBSPSync(BSPSync):
    """BSP with top-k compressed gradients (dense for the first ``compress.warmup_steps``)."""

    def __init__(self, comm, model, ccfg, seed: int, stats_slots: int = 0):
        super().__init__(comm, model, stats_slots)
        self.warmup = ccfg.warmup_steps
        self.compressor = TopKCompressor(ccfg, self.grads.numel, self.grads.buf.device, self.grads.sizes,
                                         seed=seed * 1_000_003 + comm.rank)
        self.dense_exchange = uses_dense_exchange(ccfg.density, comm.world_size)
        if self.dense_exchange:
            _announce_crossover(comm, "gradient", ccfg.density)

    def sync_grads(self, step: int, batch_size: int, timer=None, stats: torch.Tensor | None = None) -> SyncResult:
        if step < self.warmup:
            return super().sync_grads(step, batch_size, timer, stats)
        flat = self.grads.pack_([p.grad for p in self.params]).narrow(0, 0, self.grads.numel)
        values, idx = self.compressor.compress(flat)
        w = float(batch_size)
        if self.dense_exchange:
            nbytes = dense_exchange_(self.comm, self.grads, values, idx, w, timer)
            self.grads.unpack_(self.grads_())
        else:
            # values/idx are copies, so the flat buffer can receive the dense result
            _, nbytes = sparse_average(self.comm, values, idx, w, self.grads.numel, timer, out=self.grads.body)
            for g, v in zip(self.grads_(), self.grads.views):
                g.copy_(v.view_as(g))
        _lap(timer, "compress")
        summed = None
        if stats is not None:  # a separate small collective: the compressed exchange has no spare slots
            summed = stats.detach().to(torch.float64).cpu().clone()
            self.comm.allreduce_(summed)
            _lap(timer, "sync")
        return SyncResult(synced=True, bytes_sent=nbytes, density=idx.numel() / self.grads.numel,
                          residual_norm_sq=self.compressor.residual_norm_sq(), stats=summed)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "compressor": self.compressor.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.compressor.load_state_dict(d["compressor"])


class SparseFedAvgSync(FedAvgSync):
    """FedAvg whose averages exchange top-k compressed model deltas with error feedback."""

    def __init__(self, comm, model, period: int, ccfg, seed: int, start_step: int = 0):
        super().__init__(comm, model, period, start_step)
        flat = self.state_flat
        self.warmup = ccfg.warmup_steps
        self.compressor = TopKCompressor(ccfg, flat.numel, flat.buf.device, flat.sizes,
                                         seed=seed * 1_000_003 + comm.rank + 7919)
        self.dense_exchange = uses_dense_exchange(ccfg.density, comm.world_size)
        if self.dense_exchange:
            _announce_crossover(comm, "model delta", ccfg.density)
        self.anchor = self._current().clone()

    @torch.no_grad()
    def _current(self) -> torch.Tensor:
        return self.state_flat.pack_(self.state)[:-1]

    def broadcast_initial(self) -> None:
        super().broadcast_initial()
        self.reset_anchor()

    def reset_anchor(self) -> None:
        self.anchor = self._current().clone()

    @torch.no_grad()
    def average_(self, step: int, timer) -> SyncResult:
        if step < self.warmup:
            res = super().average_(step, timer)
            self.reset_anchor()
            return res
        delta = self._current() - self.anchor
        values, idx = self.compressor.compress(delta)
        w = float(self.samples_since_sync)
        flat = self.state_flat
        if self.dense_exchange:
            nbytes = dense_exchange_(self.comm, flat, values, idx, w, timer)
            avg = flat.body.div_(float(flat.buf[-1]))
        else:
            avg, nbytes = sparse_average(self.comm, values, idx, w, flat.numel, timer, out=flat.body)
        self.anchor += avg
        flat.body.copy_(self.anchor)
        flat.buf[-1] = 1.0
        flat.unpack_(self.state, average=False)
        _lap(timer, "compress")
        return SyncResult(synced=True, bytes_sent=nbytes, density=idx.numel() / flat.numel,
                          residual_norm_sq=self.compressor.residual_norm_sq())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "compressor": self.compressor.state_dict(), "anchor": self.anchor}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.compressor.load_state_dict(d["compressor"])
        self.anchor = d["anchor"].to(self.anchor.device)
