"""Eq. 2 batch choice (plan/eq2.py) against closed forms, and t_mov measured through the loader
(plan/loader_feed.py) with a dataset whose samples take a known time to load."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.data import DatasetBundle
from lbfl_mpi.models import build_model
from lbfl_mpi.plan.compute import ComputeProbe, fit_from_probes, time_steps
from lbfl_mpi.plan.eq2 import epoch_time, epoch_times, eq2_optimum, sync_period
from lbfl_mpi.plan.loader_feed import LoaderFeed

# measured per-probe tables: t_c per sample is lowest at b = 8 (1.0, 0.8, 0.9, 1.0 ms), so the
# throughput knee is 8; t_mov is a fixed 0.1 ms per sample
B = [4, 8, 16, 32]
T_C = [0.004, 0.0064, 0.0144, 0.0320]
T_MOV = [1e-4 * b for b in B]
D, W = 50_000, 4


def _closed_form(t_sync, H):
    """Reference: T(b) = D / (W b) * (t_c + t_mov + t_sync / H), written out per probe."""
    return [D / (W * b) * (c + m + t_sync / H) for b, c, m in zip(B, T_C, T_MOV)]


def _argmin(times, batches=B, max_batch=None):
    """Reference: the smallest batch among the fitting ones with the least time (numpy argmin)."""
    keep = [i for i, b in enumerate(batches) if max_batch is None or b <= max_batch]
    i = keep[int(np.argmin([times[j] for j in keep]))]
    return batches[i], times[i]


def test_epoch_times_match_the_closed_form():
    """epoch_times against the per-probe closed form D / (W b) (t_c + t_mov + t_sync / H), and the one
    probe's epoch_time against the same expression typed out."""
    for t_sync, H in [(0.0, 1), (0.05, 1), (0.05, 100)]:
        assert_close(torch.tensor(epoch_times(B, T_C, T_MOV, t_sync, H, D, W), dtype=torch.float64),
                     torch.tensor(_closed_form(t_sync, H), dtype=torch.float64), rtol=1e-12, atol=0)
    assert epoch_time(8, 0.0064, 0.0008, 0.05, 1, D, W) == D / 32 * (0.0064 + 0.0008 + 0.05)


def test_eq2_optimum_is_the_argmin_and_t_sync_moves_it_off_the_knee():
    """eq2_optimum against numpy argmin over the closed-form epoch times; the knee against
    ComputeModel.recommended_batch on the same probes (95 % of the best b / (t_c + t_mov)).

    Without t_sync both pick b = 8 (the cheapest per sample). A 50 ms allreduce every step (BSP, H=1)
    costs 50 ms / b per sample, which moves the Eq. 2 optimum to the largest probe, 32, while the knee
    stays at 8; with FedAvg's H = 100 the per-step share is 0.5 ms and the optimum is 8 again."""
    knee = fit_from_probes([ComputeProbe(b, c, m) for b, c, m in zip(B, T_C, T_MOV)]).recommended_batch()
    assert knee == 8
    for t_sync, H, expected in [(0.0, 1, 8), (0.05, 1, 32), (0.05, 100, 8)]:
        ref_b, ref_t = _argmin(_closed_form(t_sync, H))
        got_b, got_t = eq2_optimum(B, T_C, T_MOV, t_sync, H, D, W)
        assert got_b == ref_b == expected
        assert_close(got_t, ref_t, rtol=1e-12, atol=0)
    assert eq2_optimum(B, T_C, T_MOV, 0.05, 1, D, W)[0] != knee


def test_eq2_optimum_respects_the_memory_cap_and_ties():
    """With max_batch the argmin runs over the fitting probes only (numpy argmin of the closed form
    restricted to b <= max_batch); nothing fitting returns max_batch unmeasured (time NaN), as the knee
    does; equal times go to the smaller batch (the first index numpy.argmin returns)."""
    times = _closed_form(0.05, 1)
    assert eq2_optimum(B, T_C, T_MOV, 0.05, 1, D, W, max_batch=20) == _argmin(times, max_batch=20)
    assert eq2_optimum(B, T_C, T_MOV, 0.05, 1, D, W, max_batch=20)[0] == 16
    b, t = eq2_optimum(B, T_C, T_MOV, 0.05, 1, D, W, max_batch=3)
    assert b == 3 and math.isnan(t)
    # t_c proportional to b and no t_sync: every probe takes exactly D / W * 0.125 s per epoch
    flat = eq2_optimum([2, 4, 8], [0.25, 0.5, 1.0], [0.0, 0.0, 0.0], 0.0, 1, D, W)
    assert flat == (2, D / W * 0.125)


def test_sync_period_is_H():
    """H of Eq. 2 by definition: 1 for BSP, sync.period for FedAvg and post-local SGD."""
    assert sync_period("bsp", 8) == 1
    assert sync_period("fedavg", 8) == 8 and sync_period("postlocal", 5) == 5


class _SlowSamples:
    """Map-style dataset whose every sample takes ``delay`` seconds to load (a decoder stand-in)."""

    def __init__(self, n=64, delay=0.005, shape=(1, 8, 8)):
        self.n, self.delay, self.shape = n, delay, shape

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay)
        return torch.full(self.shape, float(i % 7)), int(i % 10)


@pytest.mark.serial  # t_c of a tiny step against a sleep: a loaded machine stretches the step
def test_t_mov_is_timed_through_the_loader():
    """Reference: time.sleep(delay) in every __getitem__ makes a batch of b cost at least b * delay to
    load, so the loader-fed t_mov must be >= b * delay, while t_c (the step on the returned batch) must
    not contain it. The random-tensor path (no fetch) sees none of the delay."""
    delay, shape = 0.02, (1, 8, 8)  # well above a tiny step even on a loaded machine
    torch.manual_seed(0)
    model = build_model("mlp", shape, 10)
    feed = LoaderFeed(_SlowSamples(delay=delay, shape=shape), np.arange(64), seed=0, rank=0, workers=0,
                      device="cpu")
    for b in (2, 8):
        probe = time_steps(model, shape, 10, b, "cpu", warmup=1, repeats=2, fetch=feed)
        assert probe.t_mov >= b * delay, (b, probe.t_mov)
        assert probe.t_compute < b * delay, (b, probe.t_compute)
    assert feed.loader.samples_seen == 3 * (2 + 8)  # every timed step drew its batch from the loader
    plain = time_steps(model, shape, 10, 8, "cpu", warmup=1, repeats=2)
    assert plain.t_mov < 8 * delay


def test_plan_rank_measures_t_mov_through_the_configured_loader(monkeypatch):
    """plan_rank with the dataset swapped for _SlowSamples: every row's t_mov >= b * delay (the
    sleep each sample costs in __getitem__), and on 1 rank t_sync = 0 and each row's epoch_time equals
    the closed form D / b * (t_c + t_mov) from that row's own measured values."""
    from lbfl_mpi.comm.world import Comm
    from lbfl_mpi.config import load_config
    from lbfl_mpi.plan import recommend as plan_mod

    delay, shape, n = 0.003, (1, 8, 8), 64
    data = _SlowSamples(n=n, delay=delay, shape=shape)
    bundle = DatasetBundle(data, None, 10, shape, np.arange(n, dtype=np.int64) % 10)
    monkeypatch.setattr(plan_mod, "load_dataset", lambda cfg, seed: bundle)
    cfg = load_config(None, ["model.name=mlp"])
    p = plan_mod.plan_rank(cfg, Comm(), None, [1, 2, 4], [3], rounds=1, repeats=1)
    assert p["t_sync"] == 0.0 and p["world_size"] == 1 and "t_sync = 0" in p["t_sync_note"]
    assert p["dataset_size"] == n
    for r in p["rows"]:
        assert r["t_mov"] >= r["batch"] * delay, r
        assert r["epoch_time"] == n / r["batch"] * (r["t_compute"] + r["t_mov"] + 0.0)
    assert p["eq2_batch"] in (1, 2, 4) and p["recommended_batch"] in (1, 2, 4)
