"""One federated client: everything that is its own and travels with it.

A :class:`Client` owns the model and optimizer state, the loss scaler (fp16), the loader's position
in its partition, the synchroniser's per-client state (error-feedback residuals of a compressing
exchange, FedAvg's anchor and samples since the last average), the gradient transform's state
(Eq. 8 detector, noise-scale EMAs, teacher) and the backward pass that measures its gradient
statistics (scaling/stats.py). Random state is the process's while one client lives on a worker; it
is checkpointed with the client (run/checkpoint.py).

The worker (worker.py) owns what is process-wide. The stages of a step (step.py) take a worker and a
client, so hosting several clients on one worker means swapping clients between rounds through
``components()`` / ``state_dict()`` / ``load_state_dict()``, without touching the stages.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import autocast
from ..scaling.stats import GradStatsPass


class Client:
    def __init__(self, cid: int, *, model, opt, scaler, loader, sync, transform, micro_batch: int,
                 precision: str, channels_last: bool, device: torch.device, accumulate: int = 0,
                 small_stats: bool = False, penalty=None):
        self.cid = cid
        self.model, self.opt, self.scaler, self.loader = model, opt, scaler, loader
        self.sync, self.transform = sync, transform
        self.precision, self.device = precision, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # micro_batch: scaling.small_batch rows; accumulate: train.micro_batch (scaling/stats.py)
        self.grad_pass = GradStatsPass(sync.params, micro_batch, accumulate, small_stats)
        self.grad_pass.penalty = penalty  # scaling.method = gnp (scaling/gnp.py)
        self.skips = 0  # updates dropped on a non-finite value (train.nonfinite='skip')
        # the federated algorithm's gradient correction before each update (FedProx, SCAFFOLD; fl/)
        self.correction = None

    @property
    def params(self) -> list[torch.Tensor]:
        return self.sync.params

    # ------------------------------------------------------------------------------ compute
    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4 and self.memory_format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            out = self.model(x)
        return F.cross_entropy(out.float(), y)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale_loss(loss) if self.scaler is not None else loss

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale if self.scaler is not None else 1.0

    def backward(self, x: torch.Tensor, y: torch.Tensor, before_last=None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and gradients of the local batch (and the micro-batch matrix when used);
        ``before_last()`` runs before the last backward pass (an overlapping exchange arms there)."""
        return self.grad_pass.backward(x, y, self.loss, self.scaled,
                                       lambda set_to_none: self.opt.zero_grad(set_to_none=set_to_none),
                                       before_last)

    # -------------------------------------------------------------------------------- state
    def components(self) -> dict:
        """The client's stateful parts by checkpoint key (None: not used by this run)."""
        return {"model": self.model, "optimizer": self.opt, "loader": self.loader, "sync": self.sync,
                "transform": self.transform, "scaler": self.scaler}

    def state_dict(self) -> dict:
        return {k: (v.state_dict() if v is not None else None) for k, v in self.components().items()}

    def load_state_dict(self, d: dict) -> None:
        for k, v in self.components().items():
            if v is not None and d.get(k) is not None:
                v.load_state_dict(d[k])

    def close(self) -> None:
        self.loader.close()
