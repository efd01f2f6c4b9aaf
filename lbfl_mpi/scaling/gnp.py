"""Gradient-norm penalty (``scaling.method = gnp``): the implicit regulariser of SGD made explicit.

Smith, Dherin, Barrett & De (ICLR 2021, arXiv 2101.12176, Eq. 1 and Sec. 4) show that SGD with learning
rate eps follows, to first order in eps, the modified loss

    J(theta) = L(theta) + (eps / 4) * mean_j |grad L_j(theta)|^2,                         (GNP)

L_j the mean loss of minibatch j. A large batch has fewer, larger minibatches, so it loses most of this
term; adding it back explicitly is one candidate for closing the large-batch gap. Here the j are the m
micro-batches of ``scaling.small_batch`` samples of the local batch (m = 1 without them: the batch's own
gradient norm), and

    grad J = mean_j g_j + (eps / 2) * mean_j H_j g_j,          g_j = grad L_j,  H_j = Hessian of L_j.

The Hessian-vector product is a finite difference along the unit vector u_j = g_j / |g_j|:

    H_j g_j ~= |g_j| * (grad L_j(theta + r u_j) - g_j) / r,

one extra forward and backward per micro-batch (together one extra pass over the batch), no double
backward. Steps, after the ordinary backward left mean_j g_j in ``.grad`` and the g_j in rows:

1. save the parameters and every buffer (BatchNorm running statistics: the extra forward must not
   count as a second training pass over the batch);
2. for each micro-batch j with |g_j| > 0: theta <- theta + r u_j, backward of L_j on it, and
   accumulate c += |g_j| / r * (grad L_j(theta + r u_j) - g_j); restore theta;
3. ``.grad`` <- mean_j g_j + (eps / (2 m)) * c; restore the buffers.

eps is ``scaling.gnp_epsilon``, or the step's learning rate when 0 (Smith et al.'s eps); r is
``scaling.gnp_radius``. The error of the difference is O(r |g_j|) relative to H_j g_j.
"""
from __future__ import annotations

import torch


class GradNormPenalty:
    """State of (GNP): the model whose buffers the extra passes must leave alone, the coefficient's
    source and the finite-difference radius."""

    def __init__(self, model: torch.nn.Module, epsilon: float, radius: float, lr_of=None):
        self.model, self.epsilon, self.radius = model, float(epsilon), float(radius)
        self.lr_of = lr_of  # () -> the step's learning rate, read when epsilon is 0

    def eps(self) -> float:
        return self.epsilon if self.epsilon > 0 else float(self.lr_of())

    def add_(self, params: list[torch.Tensor], chunks: list, loss_fn, rows: torch.Tensor) -> None:
        """Steps 1-3: add the penalty's gradient to ``.grad`` of ``params``; ``rows`` [m, n] holds the
        flattened g_j of the m ``chunks`` (x_j, y_j), in the order of ``params``."""
        penalty_grad_(self.model, params, chunks, loss_fn, rows, self.eps(), self.radius)


def _flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


@torch.no_grad()
def _shift_(params: list[torch.Tensor], sizes: list[int], direction: torch.Tensor, scale: float) -> None:
    for p, d in zip(params, direction.split(sizes)):
        p.add_(d.view_as(p), alpha=scale)


def penalty_grad_(model: torch.nn.Module, params: list[torch.Tensor], chunks: list, loss_fn,
                  rows: torch.Tensor, eps: float, radius: float) -> None:
    """The pure form of :meth:`GradNormPenalty.add_` (steps 1-3 of the module docstring)."""
    sizes = [p.numel() for p in params]
    saved = [p.detach().clone() for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    mean = _flat_grad(params)
    corr = torch.zeros_like(mean)
    for (xs, ys), g in zip(chunks, rows):
        norm = float(g.norm())
        if norm == 0.0:
            continue
        _shift_(params, sizes, g, radius / norm)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss_fn(xs, ys).backward()
        corr += (_flat_grad(params) - g) * (norm / radius)
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    with torch.no_grad():
        total = mean + corr * (eps / (2 * len(rows)))
        for p, v in zip(params, total.split(sizes)):
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.copy_(v.view_as(p))
        for b, s in zip(model.buffers(), buffers):
            b.copy_(s)
