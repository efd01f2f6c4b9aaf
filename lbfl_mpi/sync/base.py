"""Shared parts of the synchronisation schemes: the interface the trainer calls, the initial broadcast,
and the sample-weighted model average used by FedAvg and by evaluation of the global model.

A scheme decides *when* and *what* is combined; the exchange it is given (lbfl_mpi/exchange) decides
*how*: dense, bucketed and overlapped with backward, or top-k compressed."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..exchange import DenseExchange, Exchange, Exchanged
from ..exchange.link import link_suspended


@dataclass
class SyncResult:
    synced: bool
    bytes_sent: int                 # payload bytes this rank handed to MPI for the step's collective(s)
    density: float = math.nan       # fraction of the vector's entries sent (1 for dense, nan: nothing sent)
    residual_norm_sq: float = 0.0   # |error-feedback residual|^2 after the step (0 without compression)
    stats: torch.Tensor | None = None  # the ranks' ``stats`` summed, when the scheme exchanged them
    t_compress: float = 0.0         # seconds of the call spent compressing; the rest of it is t_sync
    t_link: float = 0.0             # seconds of t_sync spent in the emulated link's wait (exchange/link.py)


NO_SYNC = SyncResult(synced=False, bytes_sent=0)


class Synchronizer:
    """Base: no communication. Subclasses override ``sync_grads`` (before the optimizer step) and/or
    ``sync_params`` (after it). Optimizer state is never exchanged: it stays local to each client."""

    name = "none"

    def __init__(self, comm, model: torch.nn.Module):
        self.comm = comm
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # floating-point buffers (BatchNorm running statistics) travel with the parameters; integer
        # ones (num_batches_tracked) advance identically on every rank and are left alone
        self.state = self.params + [b for b in model.buffers() if b.is_floating_point()]
        self._state_exchange: Exchange | None = None
        self.samples_since_sync = 0

    @property
    def state_exchange(self) -> Exchange:
        """Dense exchange over parameters and float buffers (model averages, the initial broadcast)."""
        if self._state_exchange is None:
            self._state_exchange = DenseExchange(self.comm, self.state)
        return self._state_exchange

    def broadcast_initial(self) -> None:
        """Every client starts from rank 0's parameters and buffers."""
        if self.comm.world_size == 1:
            return
        ex = self.state_exchange
        with torch.no_grad():
            ex.pack_(self.state, 1.0, None)
            ex.broadcast_(root=0)
            ex.unpack_(self.state, average=False)

    @torch.no_grad()
    def average_state_(self, weight: float) -> Exchanged:
        """w <- sum_c weight_c w_c / sum_c weight_c over parameters and float buffers (Eq. 1b)."""
        if self.comm.world_size == 1:
            return Exchanged(bytes_sent=0)
        ex = self.state_exchange
        sent = ex.reduce_(self.state, float(weight))
        ex.unpack_(self.state)
        return sent

    def begin_step(self, batch_size: int) -> None:
        """Before the step's backward pass (an overlapping exchange starts its buckets during it)."""

    def sync_grads(self, step: int, batch_size: int, stats: torch.Tensor | None = None) -> SyncResult:
        """Before the optimizer step. ``stats`` (a small float vector) is summed over the ranks together
        with the gradients where the scheme exchanges gradients (``SyncResult.stats``). The result says
        how much of the call was compression (``t_compress``); the caller times the whole call."""
        return NO_SYNC

    def sync_params(self, step: int, samples: int) -> SyncResult:
        """After the optimizer step; ``samples`` is this rank's batch of the step."""
        return NO_SYNC

    def averages_grads(self, step: int) -> bool:
        """Whether ``sync_grads`` of ``step`` averages the gradients over more than one rank."""
        return False

    def set_density(self, density: float) -> None:
        """The top-k density of this step's compressed exchanges (compress/density.py); dense: nothing."""
        for ex in self.exchanges():
            if ex.compresses:
                ex.compressor.density = density

    def exchanges(self) -> list[Exchange]:
        """The exchanges this scheme sends through (besides the dense state exchange)."""
        return []

    @property
    def dense_bytes(self) -> int:
        """Payload of one dense exchange of this scheme (for compression ratios)."""
        return self.state_exchange.nbytes

    @property
    def exchange_name(self) -> str:
        return "dense"

    def eval_weight(self, batch_size: int) -> float:
        """This rank's weight in the evaluation-time average of the models."""
        return float(batch_size)

    def needs_average_for_eval(self) -> bool:
        """Whether the ranks' models (parameters or float buffers) may differ right now."""
        return self.comm.world_size > 1 and len(self.state) > len(self.params)

    @contextmanager
    def global_view(self, weight: float):
        """Temporarily hold the sample-weighted average model (for evaluation), then restore the local
        one, so evaluating never changes training. Collective: every rank must enter it."""
        if not self.needs_average_for_eval():
            yield
            return
        saved = [t.detach().clone() for t in self.state]
        with link_suspended(self.comm):  # evaluation is measurement: no emulated link wait
            self.average_state_(weight)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, s in zip(self.state, saved):
                    t.copy_(s)

    def state_dict(self) -> dict:
        return {"samples_since_sync": self.samples_since_sync}

    def load_state_dict(self, d: dict) -> None:
        self.samples_since_sync = int(d.get("samples_since_sync", 0))
