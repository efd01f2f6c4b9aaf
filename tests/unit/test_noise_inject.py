"""Teacher v2 (scaling/noise_inject.py) against closed forms on a synthetic problem whose per-sample
gradients are drawn from a known N(mu, Sigma): the fisher noise has covariance t Sigma, the diagonal
noise t diag(Sigma), the isotropic noise t tr(Sigma) / n I; under BSP with unequal batches the noise
that rides in the exchange has covariance (1/b_s - 1/B) Sigma and the summed q_c estimate its squared
norm; the schedules; the refusals of bad combinations."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.scaling.noise_inject import SmallBatchNoise, fisher_noise, rank_share, schedule_factor

N = 3
MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
_A = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.5, 0.4]], dtype=torch.float64)
SIGMA = _A @ _A.T  # a full covariance: the off-diagonal terms tell fisher from diagonal noise


def _rows(gen: torch.Generator, m: int, b_t: int) -> torch.Tensor:
    """[m, n] micro-batch gradients: means of b_t per-sample gradients ~ N(MU, SIGMA)."""
    per_sample = MU + torch.randn(m, b_t, N, generator=gen, dtype=torch.float64) @ _A.T
    return per_sample.mean(1)


def _cov(xs: torch.Tensor) -> torch.Tensor:
    xs = xs - xs.mean(0)
    return xs.T @ xs / (xs.shape[0] - 1)


def _sc(kind: str, b_t: int, b_s: int = 0, ema: float = 0.9, **kw) -> SimpleNamespace:
    return SimpleNamespace(teacher_noise=kind, small_batch=b_t, noise_small_batch=b_s, noise_ema=ema,
                           noise_schedule=kw.get("schedule", "always"), noise_until=kw.get("until", 0.5),
                           noise_anneal=kw.get("anneal", 0.1))


def test_fisher_noise_has_the_target_covariance():
    """(F) with (D): Cov(xi) = t Sigma, full matrix, for m = 4 micro-batches of b_t = 3."""
    gen, zgen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    t, m, b_t, trials = 0.7, 4, 3, 10000
    xs = torch.stack([fisher_noise(_rows(gen, m, b_t), torch.randn(m, generator=zgen, dtype=torch.float64), t, b_t)
                      for _ in range(trials)])
    target = t * SIGMA
    # sampling error of a covariance entry ~ sqrt(2 / trials) x scale: 1.4 %; 5 % leaves room
    assert_close(_cov(xs), target, rtol=0, atol=0.05 * float(target.abs().max()))
    assert_close(xs.mean(0), torch.zeros(N, dtype=torch.float64), rtol=0, atol=0.03)


@pytest.mark.parametrize("kind", ["diagonal", "isotropic"])
def test_diagonal_and_isotropic_noise_have_the_target_variances(kind):
    """diagonal: t diag(Sigma) from the EMA of (D) per coordinate, no correlation; isotropic: t tr(Sigma)/n
    on every coordinate, the same trace."""
    gen = torch.Generator().manual_seed(2)
    m, b_t, t, trials = 4, 2, 0.5, 12000
    inj = SmallBatchNoise(_sc(kind, b_t, ema=0.99), 10**6, [N], seed=3, rank=0, device="cpu")
    for step in range(300):  # warm the EMA
        inj.noise(_rows(gen, m, b_t), step, 0.0)
    xs = torch.stack([inj.noise(_rows(gen, m, b_t), step, t) for step in range(300, 300 + trials)])
    want = t * torch.diag(SIGMA) if kind == "diagonal" else torch.full((N,), t * float(SIGMA.trace()) / N)
    target = torch.diag(want.to(torch.float64))
    # the EMA over ~100 steps carries ~10 % noise of its own on top of the sampling error
    assert_close(_cov(xs), target, rtol=0, atol=0.12 * float(want.max()))
    assert_close(_cov(xs).trace(), target.trace(), rtol=0.08, atol=0)


def test_bsp_noise_riding_in_the_exchange_has_the_small_batch_covariance():
    """Three ranks with b_c = 4, 8, 12 (micro-batches of b_t = 2): the exchange's G = sum_c (b_c/B)(g_c +
    xi_c) minus the clean G_B has covariance (1/b_s - 1/B) Sigma, and sum_c q_c estimates its |.|^2."""
    gen = torch.Generator().manual_seed(4)
    sizes, b_t, b_s, trials = (4, 8, 12), 2, 1, 5000
    B, W = sum(sizes), len(sizes)
    injs = [SmallBatchNoise(_sc("fisher", b_t, b_s), 10**6, [N], seed=9, rank=r, device="cpu") for r in range(W)]
    noise, qs = [], []
    for step in range(trials):
        total, q_sum = torch.zeros(N, dtype=torch.float64), 0.0
        for r, b in enumerate(sizes):
            rows = _rows(gen, b // b_t, b_t)
            g = rows.mean(0).clone()
            s, q = injs[r].add_([g], rows, step, False, b, B, W)
            assert s == 1.0
            total += (b / B) * (g - rows.mean(0))  # the exchange's weight b_c / B on the added xi_c
            q_sum += float(q.sum())
        noise.append(total)
        qs.append(q_sum)
    xs = torch.stack(noise)
    target = (1.0 / b_s - 1.0 / B) * SIGMA
    # sampling error of an entry ~ sqrt(2 / trials) = 2 % of the scale
    assert_close(_cov(xs), target, rtol=0, atol=0.07 * float(target.abs().max()))
    sq = float(xs.pow(2).sum(1).mean())
    assert math.isclose(sum(qs) / trials, sq, rel_tol=0.05), (sum(qs) / trials, sq)
    assert math.isclose(sq, float(target.trace()), rel_tol=0.07)
    assert rank_share(8, 24, 3) == 24 ** 2 / (3 * 64) == 3.0  # (S): W for equal batches


def test_ranks_draw_different_normals_and_a_restored_state_draws_the_same():
    gen = torch.Generator().manual_seed(5)
    rows = _rows(gen, 4, 2).float()
    a, b = (SmallBatchNoise(_sc("diagonal", 2), 100, [N], seed=1, rank=r, device="cpu") for r in (0, 1))
    for step in range(3):
        a.noise(rows, step, 1.0)
    b.load_state_dict(a.state_dict())
    b.rank = 0
    assert_close(b.noise(rows, 3, 1.0), a.noise(rows, 3, 1.0), rtol=0, atol=0)
    b.rank = 1
    assert not torch.equal(b.noise(rows, 4, 1.0), a.noise(rows, 4, 1.0))


def test_schedule_factors():
    assert schedule_factor("always", 99, 100, 0.5, 0.1, False) == 1.0
    assert [schedule_factor("critical", 3, 100, 0.5, 0.1, c) for c in (True, False)] == [1.0, 0.0]
    # until u = 0.5, anneal a = 0.1 of T = 100: 1 before step 50, then 1 - (t - 50) / 10, 0 from step 60
    got = [schedule_factor("until", t, 100, 0.5, 0.1, False) for t in (0, 49, 50, 55, 59, 60, 99)]
    assert_close(torch.tensor(got), torch.tensor([1.0, 1.0, 1.0, 0.5, 0.1, 0.0, 0.0]))
    assert schedule_factor("until", 50, 100, 0.5, 0.0, False) == 0.0


def test_nothing_is_added_where_the_schedule_or_the_target_gives_no_noise():
    gen = torch.Generator().manual_seed(6)
    rows = _rows(gen, 4, 2)
    inj = SmallBatchNoise(_sc("fisher", 2, schedule="critical"), 100, [N], seed=0, rank=0, device="cpu")
    g = rows.mean(0).clone()
    s, q = inj.add_([g], rows, 0, False, 8, 8, 1)
    assert s == 0.0 and float(q.sum()) == 0.0 and torch.equal(g, rows.mean(0))
    big = SmallBatchNoise(_sc("fisher", 2, b_s=64), 100, [N], seed=0, rank=0, device="cpu")  # b_s >= B: k = 0
    s, q = big.add_([g], rows, 0, False, 8, 8, 1)
    assert float(q.sum()) == 0.0 and torch.equal(g, rows.mean(0))


BASE = ["scaling.method=teacher", "scaling.small_batch=4", "train.batch_size=16"]


@pytest.mark.parametrize("settings,key", [
    (["scaling.teacher_noise=fisher"], "scaling.teacher_noise"),  # without method teacher
    (BASE + ["scaling.noise_schedule=until"], "scaling.noise_schedule"),  # the learned teacher
    (BASE + ["scaling.noise_small_batch=2"], "scaling.noise_small_batch"),
    (BASE + ["scaling.teacher_noise=fisher", "train.precision=fp16"], "train.precision"),
    (BASE + ["scaling.teacher_noise=diagonal", "compress.method=topk"], "compress.method"),
    (BASE + ["scaling.teacher_noise=fisher", "scaling.teacher_pretrain_steps=5"], "scaling.teacher_pretrain_steps"),
])
def test_bad_combinations_are_refused_with_the_key(settings, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, settings)


def test_topk_is_allowed_under_fedavg():
    cfg = load_config(None, BASE + ["scaling.teacher_noise=fisher", "compress.method=topk", "sync.mode=fedavg"])
    assert cfg.scaling.teacher_noise == "fisher"
