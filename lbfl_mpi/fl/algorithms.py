"""Client algorithms of the federated layer: what a client adds to its local gradient, what it sends
at the end of a round, and how the server combines the sampled clients' contributions.

Notation: x the global model at the start of round t, y_i client i's model after its tau_i local
steps, Delta_i = y_i - x, n_i the samples client i processed in the round, p_i = n_i / sum_S n_j over
the sampled set S, N the number of clients.

- **FedAvg** (McMahan et al. 2017; Tyagi 2025, Eq. 1a/1b): Delta = sum_S p_i Delta_i.
- **FedProx** (Li et al., MLSys 2020, Eq. 2): client i minimises F_i(w) + mu/2 |w - x|^2, so before
  each local step its gradient gets mu (w - x) added (:func:`prox_correct_`); aggregation as FedAvg.
- **SCAFFOLD** (Karimireddy et al., ICML 2020, Algorithm 1, option II), with server control variate c
  and client control variates c_i (0 at the start):
    1. every local step uses g_i(y) - c_i + c (:func:`scaffold_correct_`);
    2. c_i+ = c_i - c + (x - y_i) / (sum_k eta_k), the sum of the tau_i local learning rates (the
       paper's K eta for a constant lr) (:func:`scaffold_control`). With SGD momentum rho, started
       from a zero buffer every round, the steps move the model |a_i|_1 / tau_i times further per
       unit of lr (FedNova's |a_i|_1 below), so the sum is scaled by that factor: without it the
       control variates are 1/(1 - rho) too large, and runs with rho = 0.9 diverged;
    3. the client sends Delta_i and Delta c_i = c_i+ - c_i;
    4. the server takes Delta = sum_S p_i Delta_i and c += (1/N) sum_S Delta c_i.
- **FedNova** (Wang et al., NeurIPS 2020, Eq. 6 and Sec. 4): with local SGD of momentum rho,
  started from a zero momentum buffer every round, client i's update is a combination of its tau_i
  gradients whose coefficients sum to |a_i|_1 = sum_{k=1..tau_i} (1 - rho^k) / (1 - rho) (tau_i for
  rho = 0) (:func:`nova_norm`). With the normalised d_i = -Delta_i / |a_i|_1 and
  tau_eff = sum_S p_i |a_i|_1, the server takes Delta = tau_eff sum_S p_i Delta_i / |a_i|_1, which is
  FedAvg when every tau_i is equal.

The server then applies its optimizer to Delta (server.py). :class:`RoundSums` holds one rank's sums
in one flat buffer, so a round needs one allreduce however many clients a rank hosts.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def prox_correct_(params: list[torch.Tensor], anchor: list[torch.Tensor], mu: float) -> None:
    """FedProx: grad += mu (w - x) for every trainable tensor (``anchor``: x, shaped like ``params``)."""
    for p, a in zip(params, anchor):
        if p.grad is not None:
            p.grad.add_(p.detach() - a, alpha=mu)


@torch.no_grad()
def scaffold_correct_(params: list[torch.Tensor], c: list[torch.Tensor], c_i: list[torch.Tensor]) -> None:
    """SCAFFOLD step 1: grad += c - c_i."""
    for p, cs, ci in zip(params, c, c_i):
        if p.grad is not None:
            p.grad.add_(cs - ci)


def scaffold_control(c_i: torch.Tensor, c: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     lr_sum: float) -> torch.Tensor:
    """SCAFFOLD step 2 (option II), flat vectors: c_i+ = c_i - c + (x - y) / sum_k eta_k."""
    return c_i - c + (x - y) / lr_sum


def nova_norm(tau: int, rho: float) -> float:
    """FedNova's |a_i|_1 for tau local SGD steps with momentum rho from a zero buffer."""
    if rho == 0:
        return float(tau)
    return sum((1 - rho ** k) / (1 - rho) for k in range(1, tau + 1))


class RoundSums:
    """One rank's sums of a round, in one flat buffer:
    ``[sum n_i Delta_i / s_i (state), sum n_i, sum n_i |a_i|_1, sum Delta c_i (params, SCAFFOLD)]``
    with s_i = |a_i|_1 under FedNova and 1 otherwise; after the allreduce, :meth:`mean_delta` and
    :meth:`control_sum` read the federation's totals."""

    def __init__(self, algorithm: str, n_state: int, n_params: int, device, dtype=torch.float32,
                 world_size: int = 0):
        self.algorithm, self.n_state, self.n_params = algorithm, n_state, n_params
        extra = n_params if algorithm == "scaffold" else 0
        self.world_size = world_size
        # then two slots per rank: its training seconds and samples (fl.placement = throughput)
        self.buf = torch.zeros(n_state + 2 + extra + 2 * world_size, dtype=dtype, device=device)
        self._timing = n_state + 2 + extra

    def add(self, delta: torch.Tensor, samples: int, a_norm: float = 1.0, d_control: torch.Tensor | None = None):
        s = a_norm if self.algorithm == "fednova" else 1.0
        self.buf[:self.n_state].add_(delta, alpha=samples / s)
        self.buf[self.n_state] += samples
        self.buf[self.n_state + 1] += samples * a_norm
        if d_control is not None:
            self.buf[self.n_state + 2:self._timing].add_(d_control)

    def mean_delta(self) -> torch.Tensor:
        """Delta over the whole state: FedAvg's sum_S p_i Delta_i, or FedNova's normalised form."""
        n = float(self.buf[self.n_state])
        if n <= 0:
            raise RuntimeError(f"round with {n} samples in all: no client trained")
        mean = self.buf[:self.n_state] / n
        if self.algorithm == "fednova":
            mean.mul_(float(self.buf[self.n_state + 1]) / n)  # tau_eff = sum_S p_i |a_i|_1
        return mean

    def control_sum(self) -> torch.Tensor:
        return self.buf[self.n_state + 2:self._timing]

    def add_timing(self, rank: int, seconds: float, samples: int) -> None:
        self.buf[self._timing + 2 * rank] += seconds
        self.buf[self._timing + 2 * rank + 1] += samples

    def timings(self) -> list[tuple[float, int]]:
        """(seconds, samples) of every rank's training in the round, after the allreduce."""
        t = self.buf[self._timing:].tolist()
        return [(t[2 * r], int(t[2 * r + 1])) for r in range(self.world_size)]

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()
