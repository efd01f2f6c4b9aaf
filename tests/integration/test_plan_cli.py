"""`lbfl plan` as a user runs it: one rank and two ranks, JSON output checked against its own fit."""
import json

import pytest

from ..conftest import run_lbfl


def _no_constant(name):
    raise ValueError(f"non-strict JSON constant {name}")


def _plan(n=1, *extra):
    args = ["plan", "--set", "model.name=mlp", "--probes", "1,2,4,8", "--holdout", "6,12", "--json", *extra]
    return json.loads(run_lbfl(args, n=n).stdout, parse_constant=_no_constant)  # NaN/Infinity would fail


def _check_eq2(p):
    """Reference: each row's epoch_time is the closed form D / (W b) (t_c + t_mov + t_sync / H) of
    that row's own measured values, and eq2_batch is the argmin of it over the probes (ties: smaller b)."""
    D, W, H = p["dataset_size"], p["world_size"], p["sync_period"]
    for r in p["rows"]:
        assert r["global_batch"] == W * r["batch"] and r["t_sync"] == p["t_sync"]
        assert r["epoch_time"] == pytest.approx(D / (W * r["batch"]) * (r["t_compute"] + r["t_mov"] + p["t_sync"] / H),
                                                rel=1e-12)
    probes = [r for r in p["rows"] if not r["held_out"]]
    best = min(probes, key=lambda r: (r["epoch_time"], r["batch"]))
    assert (p["eq2_batch"], p["eq2_epoch_time"]) == (best["batch"], best["epoch_time"])


def test_plan_reports_fits_and_a_consistent_max_batch():
    (p,) = _plan(1, "--memory-budget", "0.001")  # 1 MB
    rows = {r["batch"]: r for r in p["rows"]}
    assert sorted(rows) == [1, 2, 4, 6, 8, 12] and rows[6]["held_out"] and not rows[4]["held_out"]
    static = sum(p["static_bytes"].values())
    # the mlp's saved tensors are exactly linear in b, so the held-out prediction is exact
    assert p["mem_err_max"] < 1e-9
    per_sample = p["act_bytes_per_sample"] + p["batch_bytes_per_sample"]
    b = p["max_batch"]
    assert b >= 1
    predict = lambda k: rows[1]["mem_predicted"] + (k - 1) * per_sample
    assert predict(b) <= 1e6 < predict(b + 1)
    assert static < 1e6
    for r in p["rows"]:
        assert r["t_compute_predicted"] == pytest.approx(p["alpha"] + p["beta"] * r["batch"])
    assert p["recommended_batch"] in (1, 2, 4, 8)
    assert p["t_sync"] == 0.0 and p["t_sync_per_rank"] == [0.0] and p["world_size"] == 1
    _check_eq2(p)


def test_plan_under_mpi_prints_every_rank():
    """Reference: t_sync compared for exact equality between the two ranks' JSON (max over ranks of
    each rank's median), positive, and each rank's Eq. 2 table against the closed form (_check_eq2)."""
    plans = _plan(2)
    assert [p["rank"] for p in plans] == [0, 1] and all(p["max_batch"] is None for p in plans)
    t = [p["t_sync"] for p in plans]
    assert t[0] > 0 and t[0] == t[1] and plans[0]["t_sync_per_rank"] == plans[1]["t_sync_per_rank"]
    assert t[0] == max(plans[0]["t_sync_per_rank"])
    for p in plans:
        assert (p["world_size"], p["sync_mode"], p["sync_period"], p["backend"]) == (2, "bsp", 1, "mpi")
        _check_eq2(p)


def test_plan_text_prints_knee_and_eq2_side_by_side():
    """The printed table: the Eq. 2 line with t_sync = 0 on one rank (nothing to exchange), the
    memory column labelled as counted bytes, and the knee and the Eq. 2 optimum both named."""
    out = run_lbfl(["plan", "--set", "model.name=mlp", "--probes", "1,2,4", "--holdout", "3", "--rounds", "1",
                    "--set", "sync.mode=fedavg", "--set", "sync.period=4"]).stdout
    assert "t_sync = 0 (1 rank: nothing is exchanged" in out
    assert "sync.mode=fedavg (H = 4)" in out and "t_sync/H ms" in out and "epoch s" in out
    assert "count MiB" in out and "not an allocator reading" in out
    assert "recommended batch: knee" in out and "Eq. 2 optimum" in out


def test_plan_bad_budget_exits_2():
    p = run_lbfl(["plan", "--memory-budget", "-1"], check=False)
    assert p.returncode == 2 and "--memory-budget" in p.stderr
