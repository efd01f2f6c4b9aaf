"""Gradient transforms (Eq. 5-8) in real multi-rank runs: references, agreement between ranks, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args


def _steps(out, rank=0):
    with open_rank_file(out / f"rank{rank:04d}.h5") as h:
        return read_group(h, "steps")


def _local_models(out, step, n):
    return [torch.load(out / "checkpoints" / f"step_{step:08d}" / f"rank{r:04d}.pt", weights_only=False)["model"]
            for r in range(n)]


def test_factor_one_is_bitwise_the_unscaled_run(tmp_path):
    plain, x1 = tmp_path / "plain", tmp_path / "x1"
    run_lbfl(tiny_run_args(plain), n=2)
    run_lbfl(tiny_run_args(x1, "scaling.method=step", "scaling.factor=1.0", "scaling.threshold=0"), n=2)
    a, b = _steps(plain), _steps(x1)
    assert (b["phase"] == 1).all()  # every step is "critical", so U(X) = X = 1 is applied every step
    for col in ("loss", "grad_norm_sq", "grad_change", "noise_scale"):
        np.testing.assert_array_equal(a[col], b[col])
    ma, mb = torch.load(plain / "model.pt"), torch.load(x1 / "model.pt")
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


def test_step_scaling_in_every_step_equals_a_larger_learning_rate(tmp_path):
    # threshold 0: every step is critical, so w <- w - lr X G, which plain SGD does with lr' = lr X
    scaled, ref = tmp_path / "scaled", tmp_path / "ref"
    run_lbfl(tiny_run_args(scaled, "train.lr=0.02", "scaling.method=step", "scaling.factor=4.0",
                           "scaling.threshold=0"), n=2)
    run_lbfl(tiny_run_args(ref, "train.lr=0.08"), n=2)
    assert (_steps(scaled)["scale_factor"] == 4.0).all()
    ms, mr = torch.load(scaled / "model.pt"), torch.load(ref / "model.pt")
    for k in ms:
        assert_close(ms[k], mr[k], rtol=1e-4, atol=1e-6)


def test_equation_polarity_scales_outside_critical_phases(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "scaling.method=step", "scaling.factor=3.0", "scaling.threshold=0.2",
                           "scaling.polarity=equation"), n=2)
    s = _steps(out)
    np.testing.assert_array_equal(s["phase"], (s["grad_change"] >= 0.2).astype(np.int8))
    np.testing.assert_array_equal(s["scale_factor"], np.where(s["phase"] == 1, 1.0, 3.0))
    assert 0 < s["phase"].sum() < len(s["phase"])  # both regimes occur, so the test sees both


@pytest.mark.parametrize("method", [
    ["scaling.method=step", "scaling.factor=2.0", "scaling.threshold=0.3"],
    ["scaling.method=gain", "scaling.small_batch=2"],
    ["scaling.method=teacher", "scaling.small_batch=4", "scaling.teacher_steps=3", "scaling.teacher_refresh=5"],
])
def test_bsp_ranks_hold_identical_parameters_after_scaled_steps(tmp_path, method):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, *method, "run.checkpoint_every=12"), n=4)
    models = _local_models(out, 12, 4)
    for m in models[1:]:
        for k in m:
            assert torch.equal(m[k], models[0][k]), k
    s = [_steps(out, r) for r in range(4)]
    for col in ("scale_factor", "phase", "grad_change", "noise_scale"):
        for r in range(1, 4):
            np.testing.assert_array_equal(s[r][col], s[0][col])
    assert np.isfinite(s[0]["noise_scale"][1:]).all()
    if "scaling.method=gain" in method:
        assert (s[0]["scale_factor"] >= 1.0).all() and (s[0]["scale_factor"] > 1.0).any()
    if "scaling.method=teacher" in method:
        trained = np.isfinite(s[0]["teacher_nll"])
        assert trained[:3].all() and np.isfinite(s[0]["teacher_cos"][3:]).all() and (s[0]["t_teacher"] > 0).all()


def test_teacher_pretraining_leaves_the_bsp_trajectory_unchanged(tmp_path):
    """Tyagi 2025 Eq. 5b brief pretraining (scaling/teacher_pretrain.py) on 2 BSP ranks: while the teacher
    is not applied (teacher_steps above the run), a run with pretraining is bit for bit the run without
    (same batches, BatchNorm statistics, dropout draws and weights); the ranks hold the same teacher."""
    common = ["model.name=bncnn", "scaling.method=teacher", "scaling.small_batch=4", "scaling.teacher_steps=100",
              "run.checkpoint_every=12"]
    plain, pre = tmp_path / "plain", tmp_path / "pre"
    run_lbfl(tiny_run_args(plain, *common), n=2)
    p = run_lbfl(tiny_run_args(pre, *common, "scaling.teacher_pretrain_steps=3"), n=2)
    assert "lbfl: teacher pretrained for 3 of 3 steps" in p.stderr
    assert json.loads((pre / "summary.json").read_text())["teacher_pretrain_steps"] == 3
    assert json.loads((plain / "summary.json").read_text())["teacher_pretrain_steps"] == 0
    np.testing.assert_array_equal(_steps(plain)["loss"], _steps(pre)["loss"])
    ma, mb = torch.load(plain / "model.pt"), torch.load(pre / "model.pt")
    for k in ma:  # weights and BatchNorm buffers
        assert torch.equal(ma[k], mb[k]), k
    cks = [torch.load(pre / "checkpoints" / f"step_{12:08d}" / f"rank{r:04d}.pt", weights_only=False)
           for r in range(2)]
    ref = torch.load(plain / "checkpoints" / f"step_{12:08d}" / "rank0000.pt", weights_only=False)
    assert cks[0]["loader"] == ref["loader"]  # the training stream is where it would be without pretraining
    t0, t1 = (ck["transform"]["teacher"] for ck in cks)
    assert t0["trained_steps"] == 3 + 12 and t0["pretrained_steps"] == 3
    assert torch.equal(t0["sigma2_sum"], t1["sigma2_sum"])
    for k in t0["net"]:
        assert torch.equal(t0["net"][k], t1["net"][k]), k


def test_fedavg_noise_scale_comes_from_micro_batches(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    common = ["sync.mode=fedavg", "sync.period=4", "train.batch_size=32"]
    run_lbfl(tiny_run_args(on, *common, "scaling.small_batch=4"), n=2)
    run_lbfl(tiny_run_args(off, *common), n=2)
    a, b = _steps(on, 0)["noise_scale"], _steps(on, 1)["noise_scale"]
    # each client estimates from its own 8 micro-batches (the first step may still be negative: NaN)
    assert np.isfinite(a[1:]).all() and np.isfinite(b[1:]).all() and (a[1:] > 0).all()
    assert not np.array_equal(a, b)
    assert np.isnan(_steps(off)["noise_scale"]).all()  # FedAvg without micro-batches has no estimate


@pytest.mark.parametrize("bad,named", [
    (["scaling.method=step", "scaling.factor=0"], "scaling.factor"),
    (["scaling.method=step", "scaling.threshold=-0.1"], "scaling.threshold"),
    (["scaling.method=teacher", "scaling.small_batch=3"], "scaling.small_batch"),   # 3 does not divide 8
    (["scaling.method=gain", "scaling.small_batch=0"], "scaling.small_batch"),
])
def test_bad_scaling_values_exit_2(tmp_path, bad, named):
    """Checks of the config alone: they stop before MPI starts, identically at any rank count, so one
    process shows them (test_mpi_runs.py shows a config error under mpiexec -n 2)."""
    p = run_lbfl(tiny_run_args(tmp_path / "run", *bad), check=False, timeout=60)
    assert p.returncode == 2, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert len(errors) == 1 and named in errors[0], p.stderr
    assert not (tmp_path / "run").exists()


def test_sleeping_wait_changes_no_numbers(tmp_path):
    a, b = tmp_path / "spin", tmp_path / "sleep"
    run_lbfl(tiny_run_args(a), n=2)
    run_lbfl(tiny_run_args(b, "sync.wait_poll_us=100"), n=2)
    np.testing.assert_array_equal(_steps(a)["loss"], _steps(b)["loss"])


def test_single_process_gain_uses_micro_batches(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "train.batch_size=16", "scaling.method=gain", "scaling.small_batch=4"))
    s = _steps(out)
    assert np.isfinite(s["noise_scale"][1:]).all()
    # r_l in [1, sqrt(16 / 4)] per layer, so the mean over layers is too; above 1 once noise is estimated
    assert ((s["scale_factor"] >= 1.0) & (s["scale_factor"] <= 2.0 + 1e-9)).all()
    assert (s["scale_factor"][1:] > 1.0).all()


def test_adascale_gain_comes_from_the_global_batch_and_ends_every_rank_together(tmp_path):
    """Two ranks, B = 2 x 8 = 16 and B0 = 4: the gain of the free BSP estimate is the same on both ranks,
    r_t = (B_simple / B0 + 1) / (B_simple / B + 1) of the logged noise scale, the lr is r_t lr (constant
    schedule) and both ranks stop at the step where the summed gains reach train.steps."""
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "scaling.method=adascale", "train.base_batch=4", "train.steps=24", "train.lr=0.05",
                           "run.checkpoint_every=100"), n=2)
    s = [_steps(out, r) for r in range(2)]
    for col in ("scale_factor", "lr", "noise_scale", "step"):
        np.testing.assert_array_equal(s[1][col], s[0][col])
    gain, noise = np.asarray(s[0]["scale_factor"], np.float64), np.asarray(s[0]["noise_scale"], np.float64)
    n = len(gain)
    # from the first exchange on; NaN where the |G|^2 estimate is <= 0 (often, at 2 x 8 samples): r = S = 4
    known = np.isfinite(noise)
    assert known.sum() >= 2
    np.testing.assert_array_equal(gain[~known], 4.0)
    assert_close(torch.from_numpy(gain[known]), torch.from_numpy((noise[known] / 4 + 1) / (noise[known] / 16 + 1)),
                 rtol=1e-5, atol=0)
    assert_close(torch.from_numpy(np.asarray(s[0]["lr"], np.float64)), torch.from_numpy(0.05 * gain),
                 rtol=1e-6, atol=0)
    assert gain[:-1].sum() < 24 <= gain.sum() and n < 24
    models = _local_models(out, n, 2)
    for k in models[0]:
        assert torch.equal(models[1][k], models[0][k]), k
    assert json.loads((out / "summary.json").read_text())["steps_done"] == n
