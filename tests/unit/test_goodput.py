"""The adaptive global batch's model (batching/goodput.py) and controller (batching/adaptive.py): the
goodput against a hand computation, the controller's choice against a brute-force argmax over every
integer batch, the step-time fit, and the noise-scale estimator against a synthetic problem with a known
(non-diagonal) gradient covariance."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lbfl_mpi.batching.adaptive import AdaptiveBatcher
from lbfl_mpi.batching.goodput import GoodputModel, LinearFit, RankModel, choose, efficiency, grid
from lbfl_mpi.config import ConfigError, load_config, validate_for_world
from lbfl_mpi.scaling.noise_scale import NoiseScale, layer_sq_norms


def test_goodput_by_hand():
    # rank 1 twice as slow: B = 300 splits [200, 100]; t_0 = 0.01 + 200 * 1e-4 = 0.03,
    # t_1 = 0.02 + 100 * 2e-4 = 0.04 (the slowest); + t_sync 0.01 -> 0.05 s; phi = 100, B0 = 60
    gm = GoodputModel((RankModel(0.01, 1e-4), RankModel(0.02, 2e-4)), rates=(2.0, 1.0), t_sync=0.01, phi=100.0,
                      b0=60.0)
    assert gm.sizes(300) == [200, 100]
    assert gm.step_time(300) == pytest.approx(0.05)
    assert gm.goodput(300) == pytest.approx(300 / 0.05 * (100 + 60) / (100 + 300))
    assert efficiency(100.0, 60.0, 60.0) == 1.0
    # beyond its Eq. 3 limit of 64 a rank runs ceil(b / 64) passes, each paying alpha
    m = RankModel(0.01, 1e-4, cap=64)
    assert m.passes(64) == 1 and m.passes(65) == 2 and m.time(200) == pytest.approx(4 * 0.01 + 200 * 1e-4)


def _brute(lo, hi, f):
    return max(range(lo, hi + 1), key=lambda b: (f(b), -b))


@pytest.mark.parametrize("seed", range(6))
def test_choice_is_the_brute_force_argmax(seed):
    """Random 2-4 rank problems, some with Eq. 3 limits (sawtooth step times), a binding min_batch at
    small B and, for odd seeds, a max_batch: the vectorised model equals the scalar one at every B, and
    the choice is the brute-force argmax of the scalar goodput over every integer."""
    rnd = random.Random(seed)
    p = rnd.choice([2, 3, 4])
    ranks = tuple(RankModel(rnd.uniform(0, 0.05), rnd.uniform(1e-5, 1e-3), rnd.choice([None, 48, 200]))
                  for _ in range(p))
    rates = tuple(rnd.uniform(0.5, 2.0) / r.beta for r in ranks)
    hi = rnd.choice([1000, 3000])
    gm = GoodputModel(ranks, rates=rates, t_sync=rnd.uniform(0, 0.3), phi=rnd.uniform(10, 3000), b0=64.0,
                      min_batch=8, max_batch=(hi,) * p if seed % 2 else None)
    lo = 8 * p
    np.testing.assert_array_equal(gm.sizes_all(lo, hi), np.array([gm.sizes(b) for b in range(lo, hi + 1)]))
    np.testing.assert_allclose(gm.goodput_all(lo, hi), [gm.goodput(b) for b in range(lo, hi + 1)], rtol=1e-13)
    assert gm.best(lo, hi) == _brute(lo, hi, gm.goodput)


def test_a_large_range_uses_the_refined_grid():
    gm = GoodputModel((RankModel(0.02, 1e-4), RankModel(0.01, 2e-4)), rates=(2.0, 1.0), t_sync=0.5, phi=5e4, b0=64)
    got = gm.best(2, 500_000)
    assert abs(got - choose(2, 500_000, gm.goodput)) == 0
    near = max(range(got - 2000, got + 2000), key=gm.goodput)  # the optimum is smooth here
    assert gm.goodput(got) >= gm.goodput(near) * (1 - 1e-9)


def test_grid_spacing_and_ends():
    g = grid(64, 8192, per_octave=8)
    assert g[0] == 64 and g[-1] == 8192 and len(g) == 57
    assert max(b / a for a, b in zip(g, g[1:])) < 1.1
    assert grid(5, 5) == [5]
    with pytest.raises(ValueError, match="empty batch range"):
        grid(10, 5)


def test_linear_fit_recovers_alpha_and_beta():
    fit = LinearFit(forget=1.0)
    for b, m in ((32, 1), (64, 1), (128, 2), (256, 4)):
        fit.observe(m, b, 0.004 * m + 2.5e-4 * b)
    a, b = fit.fit()
    assert a == pytest.approx(0.004, rel=1e-9) and b == pytest.approx(2.5e-4, rel=1e-9)
    flat = LinearFit()
    for _ in range(5):
        flat.observe(1, 64, 0.032)  # one batch size: alpha cannot be told from beta
    assert flat.fit() == (0.0, pytest.approx(0.032 / 64))
    assert not LinearFit().ready and math.isnan(LinearFit().fit()[0])


def test_noise_scale_on_a_known_full_covariance():
    """Per-sample gradients g = G + L z (Sigma = L L^T, not diagonal), batches of b and W b samples as
    BSP forms them: B_simple converges to tr(Sigma) / |G|^2."""
    gen = torch.Generator().manual_seed(0)
    n, b, W = 40, 8, 4
    G = torch.randn(n, generator=gen, dtype=torch.float64) * 0.3
    L = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n) * 2.0
    sigma = L @ L.T
    assert (sigma - torch.diag(torch.diag(sigma))).abs().max() > 0.1
    est = NoiseScale(1, beta=0.98)
    for _ in range(1500):
        per_sample = G + torch.randn(W * b, n, generator=gen, dtype=torch.float64) @ L.T
        local = per_sample.view(W, b, n).mean(1)  # each rank's batch-b gradient
        small = torch.stack([layer_sq_norms([g]) for g in local]).mean(0)
        est.update(small, layer_sq_norms([local.mean(0)]), b, W * b)
    want = float(torch.trace(sigma) / G.pow(2).sum())
    assert want > 10  # a noise-dominated problem
    assert est.b_simple() == pytest.approx(want, rel=0.1)


class _Comm:
    """One rank's allgather seen as the given rows."""

    def __init__(self, rows):
        self.rows = np.asarray(rows, dtype=np.float64)

    def allgather_array(self, mine):
        return self.rows


def test_controller_moves_to_the_argmax_and_keeps_it_within_the_deadband():
    bcfg = load_config(None, ["batching.mode='dynamic'", "batching.global_mode='adaptive'", "batching.interval=1",
                              "batching.global_min=8", "batching.global_max=4096", "batching.deadband=0.1"]).batching
    ab = AdaptiveBatcher(bcfg, 2, 64)
    rows = [[1000.0, 0.0, 1e-3, 0.2, 500.0], [500.0, 0.0, 2e-3, 0.25, 500.0]]  # a costly sync: B grows
    ab.observe(64, 0.05)
    ab.fit.observe(1, 32, 0.032)
    new = ab.maybe_reallocate(0, _Comm(rows), phi=500.0)
    gm = ab.model(np.asarray(rows))  # the model the controller built: rates from the rows, t_sync the smallest
    assert gm.t_sync == 0.2 and gm.phi == 500.0
    best = _brute(8, 4096, gm.goodput)
    assert ab.global_batch == best > 64 and sum(new) == best and new[0] == pytest.approx(2 * new[1], abs=1)
    assert ab.goodput_pred == pytest.approx(gm.goodput(best))
    before = list(ab.sizes)
    assert ab.maybe_reallocate(1, _Comm(rows), phi=500.0) is None and ab.sizes == before  # same optimum
    # no noise-scale estimate yet: B stays
    nan_rows = [r[:4] + [math.nan] for r in rows]
    assert ab.maybe_reallocate(2, _Comm(nan_rows), phi=math.nan) is None and ab.global_batch == best


@pytest.mark.parametrize("sets,named", [
    (["batching.global_mode='adaptive'"], "batching.global_mode"),  # needs batching.mode = dynamic
    (["batching.mode='dynamic'", "batching.global_mode='adaptive'", "batching.global_min=4"], "batching.global_min"),
    (["batching.mode='dynamic'", "batching.global_mode='adaptive'", "batching.global_min=64",
      "batching.global_max=32"], "batching.global_max"),
    (["batching.mode='dynamic'", "batching.global_mode='adaptive'", "batching.global_min=256"],
     "batching.global_batch"),
    (["batching.mode='dynamic'", "batching.global_mode='adaptive'", "batching.max_batch=64",
      "batching.global_max=1024"], "batching.global_max"),
])
def test_adaptive_bounds_refusals_name_the_key(sets, named):
    """4 ranks, min_batch 2 (8 at least), starting batch 4 x 32 = 128 unless said."""
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        validate_for_world(load_config(None, ["train.batch_size=32", "batching.min_batch=2", *sets]), 4)
