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

    def sync_params(self, step: int, samples: int, timer=None) -> SyncResult:
        self.samples_since_sync += samples
        if not self.is_sync_step(step):
            return NO_SYNC
        res = self.average_(step, timer)
        self.samples_since_sync = 0
        return res

    def reset_anchor(self) -> None:
        """Mark the current (rank-identical) model as the last synchronised one; dense FedAvg needs
        no anchor."""

    def average_(self, step: int, timer) -> SyncResult:
        """The model average of a sync step (Eq. 1b), weighted by samples since the last one."""
        nbytes = self.average_state_(self.samples_since_sync)
        return SyncResult(synced=True, bytes_sent=nbytes, density=1.0)

    def eval_weight(self, batch_size: int) -> float:
        return float(self.samples_since_sync)

    def needs_average_for_eval(self) -> bool:
        return self.comm.world_size > 1 and self.samples_since_sync > 0


class PostLocalSync(Synchronizer):
    """BSP for steps < switch_step, then FedAvg with period H counted from switch_step."""

    name = "postlocal"

    def __init__(self, comm, model: torch.nn.Module, period: int, switch_step: int,
                 bsp: BSPSync | None = None, local: FedAvgSync | None = None):
        super().__init__(comm, model)
        self.switch_step = switch_step
        self.bsp = bsp or BSPSync(comm, model)
        self.local = local or FedAvgSync(comm, model, period, start_step=switch_step)

    def _active(self, step: int) -> Synchronizer:
        return self.bsp if step < self.switch_step else self.local

    def broadcast_initial(self) -> None:
        self.local.broadcast_initial()  # also sets the anchor of a compressed FedAvg

    @property
    def dense_bytes(self) -> int:
        return self.bsp.dense_bytes

    def sync_grads(self, step: int, batch_size: int, timer=None, stats: torch.Tensor | None = None) -> SyncResult:
        return self._active(step).sync_grads(step, batch_size, timer, stats)

    def sync_params(self, step: int, samples: int, timer=None) -> SyncResult:
        res = self._active(step).sync_params(step, samples, timer)
        if step == self.switch_step - 1:
            self.local.reset_anchor()  # BSP kept the models identical: local deltas start here
        return res

    def eval_weight(self, batch_size: int) -> float:
        return self.local.eval_weight(batch_size) if self.local.samples_since_sync else float(batch_size)

    def needs_average_for_eval(self) -> bool:
        return self.local.needs_average_for_eval() or self.bsp.needs_average_for_eval()

    def state_dict(self) -> dict:
        return {"bsp": self.bsp.state_dict(), "local": self.local.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.bsp.load_state_dict(d["bsp"])
        self.local.load_state_dict(d["local"])
