"""A step's gradient statistics, measured once and read by every stage after backward.

:class:`GradStats` holds what the noise scale (McCandlish et al. 2018, App. A), the gradient change of
Eq. 8 (Tyagi 2025) and the teacher (Eq. 5a-c) read about one step's gradient:

- ``layer_sq``: per-layer squared norms |g_l|^2 of the local gradient (one pass over the gradients,
  also giving ``local_sq`` = |g|^2, the ``grad_norm_sq`` column); None once a synchronisation
  replaced the gradient (BSP), so the transform measures the synchronised one itself;
- ``micro``: the [m, n] gradients of the m micro-batches of ``scaling.small_batch`` samples of the
  local batch (teacher pairs; the noise scale where the free BSP estimate is missing);
- ``summed``: the BSP statistics ``[|g_l|^2 ..., 1/b]`` summed over the ranks by the gradient exchange
  (the free estimate: the mean local |g_i|^2 at the harmonic-mean batch against the synchronised G).

:class:`GradStatsPass` produces it: it runs the local backward, in micro-batches when they are used
(same FLOPs, more memory), and measures the norms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .noise_scale import layer_sq_norms


@dataclass
class GradStats:
    step: int = 0
    batch: int = 0                          # this client's batch b of the step
    layer_sq: torch.Tensor | None = None    # [L] |g_l|^2 of the current .grad; None: not measured since sync
    local_sq: float = math.nan              # |g|^2 of the local gradient (sum of layer_sq before sync)
    micro: torch.Tensor | None = None       # [m, n] micro-batch gradients of the local batch, or None
    summed: torch.Tensor | None = None      # BSP: the ranks' stats vectors summed, or None
    collective: bool = False                # every rank holds the same (synchronised) gradient now

    @staticmethod
    def local_vector(layer_sq: torch.Tensor, batch_size: int) -> torch.Tensor:
        """[|g_l|^2 for each layer] ++ [1 / b] of this rank's local gradient, the vector the BSP exchange
        sums over the ranks with the gradients (free noise-scale estimate)."""
        sq = layer_sq.to(torch.float32)
        return torch.cat([sq, torch.tensor([1.0 / batch_size], dtype=torch.float32, device=sq.device)])

    def synchronised(self, summed: torch.Tensor | None, collective: bool) -> None:
        """After the gradient exchange: its summed statistics, and whether it replaced the gradient (the
        local norms then no longer describe ``.grad``)."""
        self.summed, self.collective = summed, collective
        if collective:
            self.layer_sq = None


class GradStatsPass:
    """One client's backward pass and gradient measurement. ``micro_batch`` > 0 splits the local batch
    into micro-batches of that size; their mean gradient is left in ``.grad`` and their rows in
    ``GradStats.micro`` (the [m, n] buffer is reused across steps: allocating it per step page-faults
    on CPU)."""

    def __init__(self, params: list[torch.Tensor], micro_batch: int):
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.micro_batch = micro_batch
        self._buf: torch.Tensor | None = None

    def backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn, scaled, zero_grad
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss of the local batch and its gradients in ``.grad``; with micro-batches also the
        [m, n] matrix of their gradients. ``loss_fn(x, y)`` is the forward pass, ``scaled(loss)`` the
        loss scaler's scaling (identity without fp16), ``zero_grad(set_to_none)`` the optimizer's."""
        zero_grad(True)
        if not self.micro_batch:
            loss = loss_fn(x, y)
            scaled(loss).backward()
            return loss.detach(), None
        chunks = list(zip(x.split(self.micro_batch), y.split(self.micro_batch)))
        shape = (len(chunks), sum(self.sizes))
        if self._buf is None or self._buf.shape != shape:
            self._buf = torch.empty(shape, device=x.device)
        flats = self._buf
        loss = torch.zeros((), device=x.device)
        for j, (xs, ys) in enumerate(chunks):
            zero_grad(False)
            lj = loss_fn(xs, ys)
            scaled(lj).backward()
            loss += lj.detach()
            for v, p in zip(flats[j].split(self.sizes), self.params):
                if p.grad is None:  # a layer this micro-batch did not reach
                    v.zero_()
                else:
                    v.copy_(p.grad.reshape(-1))
        for v, p in zip(flats.mean(0).split(self.sizes), self.params):
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.copy_(v.view_as(p))
        return loss / len(chunks), flats

    def measure(self, step: int, batch: int, micro: torch.Tensor | None, loss_scale: float = 1.0) -> GradStats:
        """The statistics of the gradients now in ``.grad`` (scaled by ``loss_scale`` under fp16: the
        norms and the micro-batch rows are unscaled here, ``.grad`` stays scaled until the update)."""
        layer_sq = layer_sq_norms([p.grad for p in self.params])  # one pass: the total and the stats
        if loss_scale != 1.0:
            layer_sq = layer_sq / loss_scale ** 2
            if micro is not None:
                micro.mul_(1.0 / loss_scale)
        return GradStats(step=step, batch=batch, layer_sq=layer_sq, local_sq=float(layer_sq.sum()), micro=micro)
