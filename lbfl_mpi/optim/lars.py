"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, "Large Batch Training of
Convolutional Networks", Algorithm 1).

Per parameter tensor ("layer") l with weights w, gradient g, trust coefficient eta, weight decay beta,
momentum m and the scheduled global lr gamma_t:

    1. local lr    lambda = eta ||w|| / (||g|| + beta ||w||)      (1 when ||w|| or ||g|| is 0)
    2. velocity    v <- m v + gamma_t lambda (g + beta w)
    3. update      w <- w - v                                   (Nesterov: w <- w - (m v + gamma_t lambda (g + beta w)))

A group with ``trust=False`` (biases and normalisation parameters, as in the paper's successors) takes
lambda = 1 and its own weight decay (0 by the builder), i.e. plain momentum SGD at lr gamma_t. The
ratio is computed with tensor ops (no host sync), so the step runs unchanged on CUDA.
"""
from __future__ import annotations

import torch


def trust_ratio(num: torch.Tensor, den: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """num / den where ``ok``, else 1 (a zero layer or a zero gradient keeps the global lr); 0-d tensors,
    no host sync."""
    one = torch.ones_like(num)
    return torch.where(ok, num / torch.where(ok, den, one), one)


class LARS(torch.optim.Optimizer):
    """Algorithm 1 of You et al. 2017; see the module docstring for the numbered steps."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, nesterov: bool = False, trust: bool = True):
        if nesterov and momentum <= 0:
            raise ValueError("LARS: nesterov needs momentum > 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "trust_coefficient": trust_coefficient, "nesterov": nesterov, "trust": trust})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, beta = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["trust"]:  # 1. local lr from the norms of the weights and the raw gradient
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    local = trust_ratio(group["trust_coefficient"] * w_norm, g_norm + beta * w_norm,
                                        (w_norm > 0) & (g_norm > 0))
                else:
                    local = None
                d = g.add(p, alpha=beta) if beta else g.clone()
                d.mul_(local * lr if local is not None else lr)   # gamma_t lambda (g + beta w)
                if m:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:  # 2. v_1 = gamma lambda (g + beta w)
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(m).add_(d)
                    d = d.add(buf, alpha=m) if group["nesterov"] else buf
                p.sub_(d)  # 3.
        return loss
