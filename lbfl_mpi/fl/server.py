"""Server optimizers of "Adaptive Federated Optimization" (Reddi et al., ICLR 2021, Algorithm 2).

The weighted mean client delta Delta_t = sum_i p_i (y_i - x_t) is the negative pseudo-gradient. Per
round, over the flat vector of trainable parameters:

    1. m_t = beta1 m_{t-1} + (1 - beta1) Delta_t                       (adam, yogi, adagrad)
    2. v_t = v_{t-1} + Delta_t^2                                        (adagrad)
       v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2                      (adam)
       v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  (yogi)
    3. x_{t+1} = x_t + eta_s m_t / (sqrt(v_t) + tau)

with m_{-1} = 0 and v_{-1} = tau^2 (the paper's v_{-1} >= tau^2), no bias correction. ``sgd`` is
x_{t+1} = x_t + eta_s Delta_t (FedAvg at eta_s = 1); ``momentum`` is FedAvgM (Hsu et al. 2019):
v_t = beta v_{t-1} + Delta_t, x_{t+1} = x_t + eta_s v_t.
"""
from __future__ import annotations

import torch


class ServerOptimizer:
    def __init__(self, name: str, lr: float, momentum: float = 0.9, betas=(0.9, 0.99), tau: float = 1e-3):
        self.name, self.lr, self.momentum = name, float(lr), float(momentum)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.tau = float(tau)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @torch.no_grad()
    def step_(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        """x += the server update for the round's mean delta (both flat, same shape)."""
        if self.name == "sgd":
            x.add_(delta, alpha=self.lr)
            return
        if self.name == "momentum":
            self.v = delta.clone() if self.v is None else self.v.mul_(self.momentum).add_(delta)
            x.add_(self.v, alpha=self.lr)
            return
        if self.m is None:
            self.m = torch.zeros_like(delta)
            self.v = torch.full_like(delta, self.tau ** 2)
        self.m.mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
        d2 = delta * delta
        if self.name == "adagrad":
            self.v.add_(d2)
        elif self.name == "adam":
            self.v.mul_(self.beta2).add_(d2, alpha=1 - self.beta2)
        elif self.name == "yogi":
            self.v.sub_(d2 * torch.sign(self.v - d2), alpha=1 - self.beta2)
        else:
            raise ValueError(f"fl.server_optimizer={self.name!r}")
        x.addcdiv_(self.m, self.v.sqrt().add_(self.tau), value=self.lr)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, d: dict) -> None:
        self.m, self.v = d.get("m"), d.get("v")


def build_server_optimizer(fl) -> ServerOptimizer:
    return ServerOptimizer(fl.server_optimizer, fl.server_lr, fl.server_momentum, fl.server_betas, fl.server_tau)
