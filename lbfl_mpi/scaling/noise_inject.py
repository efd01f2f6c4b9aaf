"""Teacher v2: structured small-batch noise drawn from the step's micro-batch gradients
(``scaling.method = teacher`` with ``scaling.teacher_noise = fisher | diagonal | isotropic``).

Tyagi 2025, Eq. 4 writes a small-batch gradient as G_small = G_large + gamma, and Eq. 5b asks for a
transform A that makes a large-batch gradient look like a small-batch one. The learned teacher
(teacher.py) fits A; this module draws gamma from the structure every step already computes.

Set-up. The local batch of b_c samples runs as m micro-batches of b_t = ``scaling.small_batch``
samples, with gradients g_1 .. g_m and mean g_bar (the local gradient). With Sigma the per-sample
gradient covariance, Cov(g_j) = Sigma / b_t (McCandlish et al. 2018, App. A), so

    E sum_j (g_j - g_bar)(g_j - g_bar)^T = (m - 1) Sigma / b_t.                                  (D)

Target (teacher.py, "Calibration"). The update of the gradient G_B of B samples should look like that
of the b_s samples inside it: gamma = g_s - G_B, Cov(gamma) = k Sigma with k = 1/b_s - 1/B, b_s =
``scaling.noise_small_batch`` (0: b_t). Each client adds xi_c with Cov(xi_c) = t_c Sigma:

1. fisher (Wen et al. 2019/2020: noise with the full Fisher's structure reproduces small-batch SGD;
   Zhu et al. 2019: escaping depends on Tr(H Sigma), so the structure matters):

       xi_c = sqrt(t_c b_t / (m - 1)) sum_j z_j (g_j - g_bar),   z_j ~ N(0, 1),                  (F)

   whose covariance is t_c Sigma by (D), restricted to the span of the m deviations. As sum_j z_j
   (g_j - g_bar) = sum_j (z_j - z_bar) g_j it is one [m] x [m, n] product: no extra backward.
2. diagonal (Wen et al.'s control): xi_c,i = sqrt(t_c v_i) z_i, z ~ N(0, I_n), v_i a bias-corrected
   EMA (weight ``scaling.noise_ema`` of the past) of b_t / (m - 1) sum_j (g_j,i - g_bar,i)^2, which
   is unbiased for Sigma_ii by (D).
3. isotropic (the control of the same trace): xi_c = sqrt(t_c mean_i v_i) z, z ~ N(0, I_n), so
   tr Cov(xi_c) = t_c sum_i v_i, diagonal's and, in expectation, fisher's.

Bookkeeping under BSP. xi_c is added to the local gradient *before* the exchange and rides in it:
the exchange forms G = sum_c (b_c / B)(g_c + xi_c) = G_B + xi_bar (sync/bsp.py), with the xi_c
independent given the gradients, so Cov(xi_bar) = sum_c (b_c / B)^2 t_c Sigma. An equal share k / W
for each of the W ranks gives

    t_c = k B^2 / (W b_c^2)         (= W k for equal batches b_c = B / W),                       (S)

which for fisher is the issue's sqrt(b_t (1/b_s - 1/B) / (m - 1)) times sqrt(W) at equal batches.
One rank, FedAvg's local steps and post-local SGD after its switch use W = 1 and B = b_c.

Statistics. Every rank also sums q_c,l = (b_c / B)^2 |xi_c,l|^2 per layer with the noise-scale
statistics. E sum_c q_c,l = E |xi_bar,l|^2 (the cross terms have mean 0), so |G_l|^2 - sum_c q_c,l
is unbiased for the clean |G_B,l|^2, which the noise scale and Eq. 8 then read
(:meth:`~lbfl_mpi.scaling.transform.GradTransform.apply`); otherwise the critical schedule would
detect its own noise. Without an exchange the local norms are measured before the noise anyway.

Schedules (``scaling.noise_schedule``), a factor s_t on the variance t_c:
- always: s = 1;
- until: s = 1 for steps t < u T, then linear down to 0 over the next a T steps (u =
  ``scaling.noise_until``, a = ``scaling.noise_anneal``, T = ``train.steps``);
- critical: s = 1 where the previous step was critical by Eq. 8, else 0 (the paper's detector; its
  value of step t is known only after step t's exchange, so step t + 1 reads it).

Randoms: z comes from a generator seeded by (run.seed, step, rank), different on every rank and the
same after a resume.
"""
from __future__ import annotations

import math

import torch

from .teacher import use_coefficient

KINDS = ("fisher", "diagonal", "isotropic")


def rank_share(b_local: float, b_apply: float, ranks: int) -> float:
    """B^2 / (W b_c^2) of (S): the factor on k that gives each of the W ranks an equal share of the
    target covariance after the exchange's weights b_c / B."""
    return b_apply ** 2 / (ranks * b_local ** 2)


def schedule_factor(schedule: str, step: int, steps: int, until: float, anneal: float, critical: bool) -> float:
    """s_t of the module docstring's schedules."""
    if schedule == "always":
        return 1.0
    if schedule == "critical":
        return 1.0 if critical else 0.0
    start = until * steps
    if step < start:
        return 1.0
    span = anneal * steps
    return max(0.0, 1.0 - (step - start) / span) if span > 0 else 0.0


def fisher_noise(rows: torch.Tensor, z: torch.Tensor, variance: float, b_micro: int) -> torch.Tensor:
    """(F): sqrt(t b_t / (m - 1)) sum_j (z_j - z_bar) g_j for the [m, n] rows g_j and [m] normals z."""
    m = rows.shape[0]
    w = (z - z.mean()) * math.sqrt(variance * b_micro / (m - 1))
    return w.to(rows.dtype) @ rows


def deviation_variance(rows: torch.Tensor, b_micro: int) -> torch.Tensor:
    """b_t / (m - 1) sum_j (g_j - g_bar)^2 per coordinate, unbiased for Sigma_ii by (D); float32 or
    wider, accumulated one row at a time (no [m, n] temporary)."""
    m = rows.shape[0]
    mean = rows.mean(0)
    acc = torch.zeros_like(mean, dtype=torch.promote_types(rows.dtype, torch.float32))
    for g in rows:
        acc += (g - mean).pow(2)
    return acc * (b_micro / (m - 1))


class SmallBatchNoise:
    """State of teacher v2 on one client: the kind, the batches of the target, the schedule and the
    diagonal variance EMA."""

    def __init__(self, sc, steps: int, sizes: list[int], seed: int, rank: int, device):
        if sc.teacher_noise not in KINDS:
            raise ValueError(f"teacher_noise={sc.teacher_noise!r}")
        self.kind, self.sizes = sc.teacher_noise, sizes
        self.b_micro = sc.small_batch
        self.b_small = sc.noise_small_batch or sc.small_batch
        self.schedule, self.until, self.anneal, self.steps = sc.noise_schedule, sc.noise_until, sc.noise_anneal, steps
        self.ema, self.seed, self.rank = sc.noise_ema, seed, rank
        self.device = torch.device(device)
        self.var: torch.Tensor | None = None  # raw EMA of the per-coordinate variance (diagonal, isotropic)
        self.count = 0                        # EMA updates so far (bias correction)
        self._gen = torch.Generator(device=self.device)

    # ------------------------------------------------------------------------------ pieces
    def strength(self, step: int, critical: bool) -> float:
        return schedule_factor(self.schedule, step, self.steps, self.until, self.anneal, critical)

    def _normals(self, step: int, n: int) -> torch.Tensor:
        self._gen.manual_seed((self.seed * 1_000_003 + step) * 4099 + self.rank + 1)
        return torch.randn(n, generator=self._gen, device=self.device, dtype=torch.float32)

    def _update_var(self, rows: torch.Tensor) -> torch.Tensor:
        """The bias-corrected EMA of :func:`deviation_variance` after this step's rows."""
        v = deviation_variance(rows, self.b_micro)
        if self.var is None:
            self.var = torch.zeros_like(v)
        self.var.mul_(self.ema).add_(v, alpha=1.0 - self.ema)
        self.count += 1
        return self.var / (1.0 - self.ema ** self.count)

    def noise(self, rows: torch.Tensor, step: int, variance: float) -> torch.Tensor | None:
        """xi with Cov = ``variance`` x Sigma (t_c s_t), flattened like a row; None when it is 0. The
        diagonal EMA advances every step, also where the schedule injects nothing."""
        v = self._update_var(rows) if self.kind != "fisher" else None
        if variance <= 0.0:
            return None
        if self.kind == "fisher":
            return fisher_noise(rows, self._normals(step, rows.shape[0]), variance, self.b_micro)
        z = self._normals(step, rows.shape[1])
        scale = (v * variance).sqrt_() if self.kind == "diagonal" else math.sqrt(variance * float(v.mean()))
        return (z * scale).to(rows.dtype)

    # ------------------------------------------------------------------------------ the step
    @torch.no_grad()
    def add_(self, grads: list[torch.Tensor], rows: torch.Tensor, step: int, critical: bool, b_local: int,
             b_apply: int, ranks: int) -> tuple[float, torch.Tensor]:
        """Add this client's xi_c to ``grads`` (the local gradient, before any exchange), with B =
        ``b_apply`` and W = ``ranks`` as in (S). Returns s_t and q_c = (b_c / B)^2 |xi_c,l|^2 per layer
        (float64; zeros when nothing was added)."""
        s = self.strength(step, critical)
        k = use_coefficient(self.b_small, b_apply)
        xi = self.noise(rows, step, s * k * rank_share(b_local, b_apply, ranks))
        q = torch.zeros(len(grads), dtype=torch.float64, device=rows.device)
        if xi is None:
            return s, q
        w2 = (b_local / b_apply) ** 2
        for i, (g, part) in enumerate(zip(grads, xi.split(self.sizes))):
            g.add_(part.view_as(g))
            q[i] = part.double().pow(2).sum() * w2
        return s, q

    def state_dict(self) -> dict:
        return {"var": None if self.var is None else self.var.detach().cpu().clone(), "count": self.count}

    def load_state_dict(self, d: dict) -> None:
        self.var = None if d.get("var") is None else d["var"].to(self.device).clone()
        self.count = int(d.get("count", 0))
