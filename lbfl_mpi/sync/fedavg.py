"""FedAvg / local SGD and post-local SGD.

FedAvg (McMahan et al. 2017; Tyagi 2025, Eq. 1a/1b): every client runs H = ``sync.period`` local SGD
steps on its own data (Eq. 1a), then the models are averaged, weighted by the samples each client
processed since the last average (Eq. 1b; equal weights when all b_c are equal). BatchNorm running
statistics are averaged with the parameters. Optimizer state (momentum, Adam moments) stays local.

Post-local SGD (Lin et al. 2020): BSP until ``sync.switch_step``, FedAvg afterwards.
"""
from __future__ import annotations

import torch

from .base import NO_SYNC, SyncResult, Synchronizer
from .bsp import BSPSync


class FedAvgSync(Synchronizer):
    name = "fedavg"

    def __init__(self, comm, model: torch.nn.Module, period: int, start_step: int = 0):
        super().__init__(comm, model)
        self.period = period
        self.start_step = start_step

    def is_sync_step(self, step: int) -> bool:
        """Average after local steps start_step+H-1, start_step+2H-1, ... (0-based step indices)."""
        return step >= self.start_step and (step - self.start_step + 1) % self.period == 0

    def sync_params(self, step: int, samples: int) -> SyncResult:
        self.samples_since_sync += samples
        if not self.is_sync_step(step):
            return NO_SYNC
        nbytes = self.average_state_(self.samples_since_sync)
        self.samples_since_sync = 0
        return SyncResult(synced=True, bytes_sent=nbytes)

    def eval_weight(self, batch_size: int) -> float:
        return float(self.samples_since_sync)

    def needs_average_for_eval(self) -> bool:
        return self.comm.world_size > 1 and self.samples_since_sync > 0


class PostLocalSync(Synchronizer):
    """BSP for steps < switch_step, then FedAvg with period H counted from switch_step."""

    name = "postlocal"

    def __init__(self, comm, model: torch.nn.Module, period: int, switch_step: int):
        super().__init__(comm, model)
        self.switch_step = switch_step
        self.bsp = BSPSync(comm, model)
        self.local = FedAvgSync(comm, model, period, start_step=switch_step)

    def _active(self, step: int) -> Synchronizer:
        return self.bsp if step < self.switch_step else self.local

    def sync_grads(self, step: int, batch_size: int) -> SyncResult:
        return self._active(step).sync_grads(step, batch_size)

    def sync_params(self, step: int, samples: int) -> SyncResult:
        return self._active(step).sync_params(step, samples)

    def eval_weight(self, batch_size: int) -> float:
        return self.local.eval_weight(batch_size) if self.local.samples_since_sync else float(batch_size)

    def needs_average_for_eval(self) -> bool:
        return self.local.needs_average_for_eval() or self.bsp.needs_average_for_eval()

    def state_dict(self) -> dict:
        return self.local.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.local.load_state_dict(d)
