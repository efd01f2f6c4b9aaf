"""Bulk-synchronous parallel SGD (the paper's BSP, H = 1).

Steps, every iteration (Tyagi 2025, Sec. II; Eq. 1a/1b with H = 1):
1. each client c computes its local gradient g_c on b_c samples;
2. one allreduce of the flat buffer ``[b_c * g_c, b_c]``;
3. every client sets G = sum_c b_c g_c / sum_c b_c, the gradient of the global batch B = sum_c b_c,
   and takes the same optimizer step, so parameters stay identical on every rank.
"""
from __future__ import annotations

import torch

from .flat import FlatBuffer
from .base import SyncResult, Synchronizer


class BSPSync(Synchronizer):
    name = "bsp"

    def __init__(self, comm, model: torch.nn.Module, stats_slots: int = 0):
        super().__init__(comm, model)
        self.grads = FlatBuffer(self.params, extras=stats_slots)

    @property
    def dense_bytes(self) -> int:
        return self.grads.nbytes

    def grads_(self) -> list[torch.Tensor]:
        """The gradient tensors, created as zeros where a layer got none (another rank may use it)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.params]

    def sync_grads(self, step: int, batch_size: int, timer=None, stats: torch.Tensor | None = None) -> SyncResult:
        if self.comm.world_size == 1:
            return SyncResult(synced=True, bytes_sent=0, density=1.0, stats=stats)
        self.grads.pack_([p.grad for p in self.params], weight=float(batch_size), extras=stats)
        self.comm.allreduce_(self.grads.buf)
        self.grads.unpack_(self.grads_())
        return SyncResult(synced=True, bytes_sent=self.grads.nbytes, density=1.0,
                          stats=self.summed_stats(stats))

    def summed_stats(self, stats: torch.Tensor | None) -> torch.Tensor | None:
        """The extras slots after the allreduce (the ranks' stats summed), or None."""
        if stats is None:
            return None
        if self.grads.extras.numel() != stats.numel():
            raise ValueError(f"{stats.numel()} stats for {self.grads.extras.numel()} slots")
        return self.grads.extras.detach().to(torch.float64).clone()
