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

Gradient accumulation (``train.micro_batch`` = m_b > 0) runs the local batch b as micro-batches x_j of
n_j <= m_b samples and lets autograd sum their gradients:

1. ``.grad`` = sum_j (n_j / b) grad L(x_j), the loss of micro-batch j weighted by n_j / b, which is
   the gradient of the batch's mean loss exactly (up to summation order) for a model without
   BatchNorm; with BatchNorm each micro-batch is normalised over its own n_j samples (ghost batches);
2. the overlapping exchange is armed (``before_last``) only before the last micro-batch's backward,
   so its buckets overlap that backward alone, as DDP's ``no_sync`` does;
3. where the noise scale needs small-batch statistics (``small_stats``), the per-layer |g_j|^2 of
   every micro-batch comes from the difference of ``.grad`` before and after its backward, scaled by
   b / n_j: one gradient-sized scratch buffer, no [m, n] matrix. ``GradStats.small_sq`` is their
   mean (the micro-batches must then be of equal size) and ``small_batch`` = m_b.
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
    small_sq: torch.Tensor | None = None    # [L] mean per-layer |g_j|^2 of accumulated micro-batches, or None
    small_batch: int = 0                    # their size n_j
    collective: bool = False                # every rank holds the same (synchronised) gradient now
    noise_sq: torch.Tensor | None = None    # teacher v2: [L] q_c = (b_c/B)^2 |xi_c,l|^2 it added (noise_inject.py)

    @staticmethod
    def local_vector(layer_sq: torch.Tensor, batch_size: int, noise_sq: torch.Tensor | None = None) -> torch.Tensor:
        """[|g_l|^2 for each layer] ++ [1 / b] of this rank's local gradient, the vector the BSP exchange
        sums over the ranks with the gradients (free noise-scale estimate); ++ teacher v2's [q_c,l] when
        it injected noise (noise_inject.py, "Statistics")."""
        sq = layer_sq.to(torch.float32)
        parts = [sq, torch.tensor([1.0 / batch_size], dtype=torch.float32, device=sq.device)]
        if noise_sq is not None:
            parts.append(noise_sq.to(sq))
        return torch.cat(parts)

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
    on CPU). ``accumulate`` > 0 (and ``micro_batch`` 0) is gradient accumulation in micro-batches of
    at most that size (module docstring), with their per-layer statistics when ``small_stats``."""

    def __init__(self, params: list[torch.Tensor], micro_batch: int, accumulate: int = 0,
                 small_stats: bool = False):
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.micro_batch = micro_batch
        self.accumulate = 0 if micro_batch else accumulate
        self.small_stats = small_stats
        self._buf: torch.Tensor | None = None
        self._prev: list[torch.Tensor] | None = None
        self.small_sq: torch.Tensor | None = None  # of the last backward (accumulation with small_stats)
        self.small_n = 0
        self.chunks = 1                              # micro-batches of the last backward
        self.penalty = None  # scaling.method = gnp: a GradNormPenalty (gnp.py) run after the backward

    def backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn, scaled, zero_grad, before_last=None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss of the local batch and its gradients in ``.grad``; with micro-batches also the
        [m, n] matrix of their gradients. ``loss_fn(x, y)`` is the forward pass, ``scaled(loss)`` the
        loss scaler's scaling (identity without fp16), ``zero_grad(set_to_none)`` the optimizer's;
        ``before_last()`` runs before the last (or only) backward pass."""
        zero_grad(True)
        self.small_sq, self.chunks = None, 1
        if self.accumulate and x.shape[0] > self.accumulate:
            return self._accumulate(x, y, loss_fn, scaled, before_last), None
        if not self.micro_batch:
            if before_last is not None:
                before_last()
            loss = loss_fn(x, y)
            scaled(loss).backward()
            if self.penalty is not None:  # m = 1: the batch's own gradient norm
                rows = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=x.device)
                                  for p in self.params])[None]
                self.penalty.add_(self.params, [(x, y)], loss_fn, rows)
            return loss.detach(), None
        if before_last is not None:
            before_last()
        chunks = list(zip(x.split(self.micro_batch), y.split(self.micro_batch)))
        self.chunks = len(chunks)
        shape = (len(chunks), sum(self.sizes))
        if self._buf is None or self._buf.shape != shape or self._buf.dtype != self.params[0].dtype:
            self._buf = torch.empty(shape, device=x.device, dtype=self.params[0].dtype)
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
        if self.penalty is not None:  # the rows stay the plain g_j: the statistics read them
            self.penalty.add_(self.params, chunks, loss_fn, flats)
        return loss / len(chunks), flats

    def _accumulate(self, x, y, loss_fn, scaled, before_last) -> torch.Tensor:
        """Steps 1-3 of the module docstring; returns the batch's mean loss."""
        b = x.shape[0]
        chunks = list(zip(x.split(self.accumulate), y.split(self.accumulate)))
        self.chunks = m = len(chunks)
        stats = self.small_stats and b % self.accumulate == 0
        if stats and self._prev is None:
            self._prev = [torch.zeros_like(p) for p in self.params]
        sq = torch.zeros(len(self.params), dtype=torch.float64, device=x.device) if stats else None
        loss = torch.zeros((), device=x.device)
        seen = [False] * len(self.params)  # .grad of the layer exists in this step (prev is current)
        for j, (xs, ys) in enumerate(chunks):
            n_j = xs.shape[0]
            if j == m - 1 and before_last is not None:
                before_last()
            lj = loss_fn(xs, ys)
            scaled(lj * (n_j / b)).backward()
            loss += lj.detach() * (n_j / b)
            if stats:  # |g_j|^2 per layer from the change of .grad, scaled back by b / n_j
                for k, (p, prev) in enumerate(zip(self.params, self._prev)):
                    if p.grad is None:
                        continue
                    d = p.grad - prev if seen[k] else p.grad
                    sq[k] += d.double().pow(2).sum() * (b / n_j) ** 2
                    prev.copy_(p.grad)
                    seen[k] = True
        if stats:
            self.small_sq, self.small_n = sq / m, self.accumulate
        return loss

    def measure(self, step: int, batch: int, micro: torch.Tensor | None, loss_scale: float = 1.0) -> GradStats:
        """The statistics of the gradients now in ``.grad`` (scaled by ``loss_scale`` under fp16: the
        norms and the micro-batch rows are unscaled here, ``.grad`` stays scaled until the update)."""
        layer_sq = layer_sq_norms([p.grad for p in self.params])  # one pass: the total and the stats
        if loss_scale != 1.0:
            layer_sq = layer_sq / loss_scale ** 2
            if micro is not None:
                micro.mul_(1.0 / loss_scale)
        small_sq = None
        if self.small_sq is not None:
            small_sq = self.small_sq / loss_scale ** 2 if loss_scale != 1.0 else self.small_sq
        return GradStats(step=step, batch=batch, layer_sq=layer_sq, local_sq=float(layer_sq.sum()), micro=micro,
                         small_sq=small_sq, small_batch=self.small_n if small_sq is not None else 0)
