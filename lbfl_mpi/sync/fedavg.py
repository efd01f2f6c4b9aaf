"""FedAvg / local SGD and post-local SGD.

FedAvg (McMahan et al. 2017; Tyagi 2025, Eq. 1a/1b): every client runs H = ``sync.period`` local SGD
steps on its own data (Eq. 1a), then the models are averaged, weighted by the samples each client
processed since the last average (Eq. 1b; equal weights when all b_c are equal). BatchNorm running
statistics are averaged with the parameters. Optimizer state (momentum, Adam moments) stays local.

With a compressing exchange (top-k, Eq. 9) the model delta since the last average is exchanged
instead, with its own error feedback: every rank applies anchor + averaged compressed delta, so all
end the sync with identical models.

Post-local SGD (Lin et al. 2020): BSP until ``sync.switch_step``, FedAvg afterwards.
"""
from __future__ import annotations

import torch

from ..exchange import Exchange
from ..telemetry.timers import StepTimer
from .base import NO_SYNC, Synchronizer, SyncResult
from .bsp import BSPSync


class FedAvgSync(Synchronizer):
    name = "fedavg"

    def __init__(self, comm, model: torch.nn.Module, period: int, start_step: int = 0,
                 exchange: Exchange | None = None):
        super().__init__(comm, model)
        self.period = period
        self.start_step = start_step
        self.exchange = exchange if exchange is not None else self.state_exchange
        self.anchor = self._current().clone() if self.exchange.compresses else None

    @property
    def exchange_name(self) -> str:
        return self.exchange.name

    def exchanges(self) -> list:
        return [self.exchange]

    @torch.no_grad()
    def _current(self) -> torch.Tensor:
        """The model (parameters and float buffers) as one flat vector (a view into the buffer)."""
        return self.exchange.pack_(self.state, 1.0, None)[:self.exchange.numel]

    def is_sync_step(self, step: int) -> bool:
        """Average after local steps start_step+H-1, start_step+2H-1, ... (0-based step indices)."""
        return step >= self.start_step and (step - self.start_step + 1) % self.period == 0

    def sync_params(self, step: int, samples: int) -> SyncResult:
        self.samples_since_sync += samples
        if not self.is_sync_step(step):
            return NO_SYNC
        res = self.average_(step)
        self.samples_since_sync = 0
        return res

    def broadcast_initial(self) -> None:
        super().broadcast_initial()
        self.reset_anchor()

    def reset_anchor(self) -> None:
        """Mark the current (rank-identical) model as the last synchronised one; dense FedAvg needs
        no anchor."""
        if self.anchor is not None:
            self.anchor = self._current().clone()

    @torch.no_grad()
    def average_(self, step: int) -> SyncResult:
        """The model average of a sync step (Eq. 1b), weighted by samples since the last one."""
        if self.anchor is None:
            sent = self.average_state_(self.samples_since_sync)
            return SyncResult(synced=True, bytes_sent=sent.bytes_sent, density=1.0, t_link=sent.t_link)
        ex = self.exchange
        delta = self._current() - self.anchor
        sent = ex.reduce_(delta, float(self.samples_since_sync), step=step)
        clock = StepTimer(delta.device)  # applying the averaged delta counts as compression
        clock.start()
        total = ex.total_weight()
        if total <= 0:
            raise RuntimeError(f"model average with total weight {total}: no rank contributed samples")
        self.anchor += ex.body.div_(total)
        ex.body.copy_(self.anchor)
        ex.unpack_(self.state, average=False)
        return SyncResult(synced=True, bytes_sent=sent.bytes_sent, density=sent.density,
                          residual_norm_sq=sent.residual_norm_sq, t_compress=sent.t_compress + clock.lap("compress"),
                          t_link=sent.t_link)

    def eval_weight(self, batch_size: int) -> float:
        return float(self.samples_since_sync)

    def needs_average_for_eval(self) -> bool:
        return self.comm.world_size > 1 and self.samples_since_sync > 0

    def state_dict(self) -> dict:
        d = {**super().state_dict(), "exchange": self.exchange.state_dict()}
        if self.anchor is not None:
            d["anchor"] = self.anchor
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.exchange.load_state_dict(d.get("exchange", {}))
        if self.anchor is not None:
            self.anchor = d["anchor"].to(self.anchor.device).clone()


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

    def begin_step(self, batch_size: int) -> None:
        self.bsp.begin_step(batch_size)

    def exchanges(self) -> list:
        return [*self.bsp.exchanges(), *self.local.exchanges()]

    @property
    def exchange_name(self) -> str:
        return f"{self.bsp.exchange_name}+{self.local.exchange_name}"

    @property
    def dense_bytes(self) -> int:
        return self.bsp.dense_bytes

    def sync_grads(self, step: int, batch_size: int, stats: torch.Tensor | None = None) -> SyncResult:
        return self._active(step).sync_grads(step, batch_size, stats)

    def averages_grads(self, step: int) -> bool:
        return self._active(step).averages_grads(step)

    def sync_params(self, step: int, samples: int) -> SyncResult:
        res = self._active(step).sync_params(step, samples)
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
