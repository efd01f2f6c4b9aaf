"""LAMB: layer-wise adaptive moments (You et al., ICLR 2020, "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", Algorithm 2), with bias correction.

Per parameter tensor ("layer") x with gradient g at step t (1-based), betas (b1, b2), eps, weight
decay lambda and the scheduled lr eta_t:

    1. moments        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    2. bias correct   m^ = m / (1 - b1^t);      v^ = v / (1 - b2^t)
    3. Adam ratio     r = m^ / (sqrt(v^) + eps)
    4. direction      u = r + lambda x
    5. trust ratio    phi = ||x|| / ||u||  (phi the identity; 1 when either norm is 0)
    6. update         x <- x - eta_t phi u

A group with ``trust=False`` (biases and normalisation parameters) takes phi = 1 and its own weight
decay (0 by the builder): an Adam step with decoupled decay. The step counter is a 0-d CPU tensor per
parameter, as in torch's Adam, so the state dict round-trips through checkpoints and client swaps.
"""
from __future__ import annotations

import torch

from .lars import trust_ratio


class LAMB(torch.optim.Optimizer):
    """Algorithm 2 of You et al. 2020; see the module docstring for the numbered steps."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, trust: bool = True):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "trust": trust})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), eps, wd, lr = group["betas"], group["eps"], group["weight_decay"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)                       # 1.
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)          # 2.-3.
                u = (m / (1 - b1 ** t)).div_(denom)
                if wd:
                    u.add_(p, alpha=wd)                                # 4.
                if group["trust"]:                                     # 5.
                    x_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
                    u.mul_(trust_ratio(x_norm, u_norm, (x_norm > 0) & (u_norm > 0)))
                p.sub_(u, alpha=lr)                                    # 6.
        return loss
