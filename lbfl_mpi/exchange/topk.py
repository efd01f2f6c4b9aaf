"""Top-k compressed exchange (Tyagi 2025, Eq. 9, with error feedback; compress/topk.py).

Each rank compresses its (unweighted) vector with its own residual and sends (w_c * values, int32
indices) with one allgather of the sizes and one ragged allgather of the payload; every rank
scatter-adds all ranks' values into the dense buffer (index_add_, so indices chosen by several ranks
add up), one rank at a time in rank order, so every rank gets the same bits also under CUDA's atomic
adds. The total weight comes from the gathered headers; the extras slots take one small allreduce.

Crossover: an allgather of k entries (8 bytes each) from p ranks moves (p-1) 8k bytes into each rank,
a ring allreduce 2 (p-1)/p 4n; the sparse exchange is larger when density * p > 1. Then the
compressed vector is scattered into the buffer and sent through the dense allreduce (same result,
fewer bytes).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from ..compress.density import max_density
from ..compress.topk import TopKCompressor
from ..telemetry.timers import StepTimer
from .base import Exchange, Exchanged
from .link import link_wait

HEADER_BYTES = 16  # per-rank [k, weight] as two float64, gathered before the payload


def sparse_sum_(comm, values: torch.Tensor, idx: torch.Tensor, weight: float, out: torch.Tensor,
                clock: StepTimer | None = None) -> tuple[float, int]:
    """out <- sum_c w_c C_c from every rank's (values, indices); returns (sum_c w_c, bytes sent).
    ``clock`` (the calling exchange's own) gets the packing and scatter lapped as "compress" and the
    gathers as "sync".

    ``out`` is overwritten (a reused buffer: allocating a fresh dense vector per call cost more than the
    whole exchange on CPU, page faults; benchmarks/results/*bench_topk.md)."""
    if clock is None:
        clock = StepTimer(values.device)
        clock.start()
    k = int(idx.numel())
    payload = torch.empty(2 * k, dtype=torch.float32, device=values.device)
    torch.mul(values, weight, out=payload[:k])
    payload[k:] = idx.to(torch.int32).view(torch.float32)  # indices travel bit-exact in the same buffer
    clock.lap("compress")
    comm.arrive()
    heads = comm.allgather_array(np.array([k, weight], dtype=np.float64))  # [p, 2]
    counts = [2 * int(h[0]) for h in heads]
    recv = comm.allgatherv(payload, counts)
    clock.lap("sync")
    total = float(heads[:, 1].sum())
    out.zero_()
    off = 0
    for c in counts:  # one index_add_ per rank, in rank order: identical bits on every rank
        kr = c // 2
        out.index_add_(0, recv[off + kr:off + c].view(torch.int32).long(), recv[off:off + kr])
        off += c
    clock.lap("compress")
    return total, (HEADER_BYTES + payload.numel() * payload.element_size()) if comm.world_size > 1 else 0


def sparse_average(comm, values: torch.Tensor, idx: torch.Tensor, weight: float, numel: int,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Dense sum_c w_c C_c / sum_c w_c; returns (dense, bytes sent)."""
    out = torch.empty(numel, dtype=torch.float32, device=values.device) if out is None else out
    total, nbytes = sparse_sum_(comm, values, idx, weight, out)
    if total <= 0:
        raise RuntimeError(f"sparse average with total weight {total}: no rank contributed samples")
    return out.div_(total), nbytes


def uses_dense_exchange(density: float, world_size: int) -> bool:
    """Crossover rule from the module docstring."""
    return density * world_size > 1


class TopKExchange(Exchange):
    """Top-k with error feedback; dense for steps below ``compress.warmup_steps``."""

    name = "topk"
    compresses = True

    def __init__(self, comm, tensors, ccfg, seed: int, extras: int = 0, what: str = "gradient"):
        super().__init__(comm, tensors, extras)
        self.warmup = ccfg.warmup_steps
        self.compressor = TopKCompressor(ccfg, self.flat.numel, self.flat.buf.device, self.flat.sizes, seed=seed)
        # taken once, for the largest density the run can use (compress/density.py)
        self.dense_crossover = uses_dense_exchange(max_density(ccfg), comm.world_size)
        if self.dense_crossover and comm.rank == 0:
            print(f"lbfl: top-k density {max_density(ccfg)} x {comm.world_size} ranks > 1: a sparse exchange of "
                  f"the {what} would exceed a dense allreduce; sending the compressed {what} densely",
                  file=sys.stderr, flush=True)

    def reduce_(self, sources, weight: float, *, step: int = 0, extras: torch.Tensor | None = None) -> Exchanged:
        flat, comm = self.flat, self.comm
        if step < self.warmup:
            self.pack_(sources, weight, extras)
            comm.allreduce_(flat.buf)
            return Exchanged(bytes_sent=self.nbytes if comm.world_size > 1 else 0,
                             t_link=link_wait(comm, "allreduce", self.nbytes))
        clock = StepTimer(flat.buf.device)  # this exchange's own: compression vs communication
        clock.start()
        x = self.pack_(sources, 1.0, extras).narrow(0, 0, flat.numel)
        values, idx = self.compressor.compress(x)  # copies: the buffer may receive the result
        if self.dense_crossover:
            flat.body.zero_()
            flat.body[idx] = values * weight
            flat.buf[-1] = weight
            clock.lap("compress")
            comm.allreduce_(flat.buf)
            nbytes = self.nbytes if comm.world_size > 1 else 0
            t_link = link_wait(comm, "allreduce", self.nbytes)
        else:
            total, nbytes = sparse_sum_(comm, values, idx, weight, flat.body, clock)
            flat.buf[-1] = total
            t_link = link_wait(comm, "allgather", nbytes)
            if flat.extras.numel():  # the sparse payload has no spare slots: one small allreduce
                comm.allreduce_(flat.extras)
                t_link += link_wait(comm, "allreduce", flat.extras.numel() * flat.extras.element_size())
        return Exchanged(bytes_sent=nbytes, density=idx.numel() / flat.numel,
                         residual_norm_sq=self.compressor.residual_norm_sq(), t_compress=clock.get("compress"),
                         t_link=t_link)

    def state_dict(self) -> dict:
        return {"compressor": self.compressor.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.compressor.load_state_dict(d["compressor"])
