"""Bulk-synchronous parallel SGD (the paper's BSP, H = 1).

Steps, every iteration (Tyagi 2025, Sec. II; Eq. 1a/1b with H = 1):
1. each client c computes its local gradient g_c on b_c samples;
2. the exchange sums ``[b_c * g_c, stats_c, b_c]`` over the ranks (one allreduce, buckets overlapped
   with backward, or a top-k compressed exchange, Eq. 9);
3. every client sets G = sum_c b_c g_c / sum_c b_c, the gradient of the global batch B = sum_c b_c
   (exactly so for models without BatchNorm: each client normalises over its own batch), and takes
   the same optimizer step, so parameters stay identical on every rank.
"""
from __future__ import annotations

import torch

from ..exchange import DenseExchange, Exchange
from ..optim.grads import grads_or_zeros_
from .base import Synchronizer, SyncResult


class BSPSync(Synchronizer):
    name = "bsp"

    def __init__(self, comm, model: torch.nn.Module, exchange: Exchange | None = None, stats_slots: int = 0):
        super().__init__(comm, model)
        self.exchange = exchange if exchange is not None else DenseExchange(comm, self.params, stats_slots)
        self.slots = self.exchange.extra_slots

    @property
    def dense_bytes(self) -> int:
        return self.exchange.nbytes

    @property
    def exchange_name(self) -> str:
        return self.exchange.name

    def exchanges(self) -> list:
        return [self.exchange]

    def grads_(self) -> list[torch.Tensor]:
        """The gradient tensors, created as zeros where a layer got none (another rank may use it)."""
        return grads_or_zeros_(self.params)

    def averages_grads(self, step: int) -> bool:
        return self.comm.world_size > 1

    def begin_step(self, batch_size: int) -> None:
        if self.comm.world_size > 1:
            self.exchange.begin_(float(batch_size))

    def sync_grads(self, step: int, batch_size: int, stats: torch.Tensor | None = None) -> SyncResult:
        if self.comm.world_size == 1:
            return SyncResult(synced=True, bytes_sent=0, density=1.0, stats=stats)
        if stats is not None and stats.numel() != self.slots:
            raise ValueError(f"{stats.numel()} stats for {self.slots} slots")
        sent = self.exchange.reduce_([p.grad for p in self.params], float(batch_size), step=step, extras=stats)
        self.exchange.unpack_(self.grads_())
        return SyncResult(synced=True, bytes_sent=sent.bytes_sent, density=sent.density,
                          residual_norm_sq=sent.residual_norm_sq, t_compress=sent.t_compress, t_link=sent.t_link,
                          stats=self.exchange.summed_extras() if stats is not None else None)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "exchange": self.exchange.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.exchange.load_state_dict(d.get("exchange", {}))
