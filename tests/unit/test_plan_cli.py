"""`lbfl plan` as a user runs it: one rank and two ranks, JSON output checked against its own fit."""
import json

import pytest

from ..conftest import run_lbfl


def _plan(n=1, *extra):
    args = ["plan", "--set", "model.name=mlp", "--probes", "1,2,4,8", "--holdout", "6,12", "--json", *extra]
    return json.loads(run_lbfl(args, n=n).stdout)


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
    predict = lambda k: rows[1]["mem_predicted"] + (k - 1) * per_sample  # noqa: E731
    assert predict(b) <= 1e6 < predict(b + 1)
    assert static < 1e6
    for r in p["rows"]:
        assert r["t_compute_predicted"] == pytest.approx(p["alpha"] + p["beta"] * r["batch"])
    assert p["recommended_batch"] in (1, 2, 4, 8)


def test_plan_under_mpi_prints_every_rank():
    plans = _plan(2)
    assert [p["rank"] for p in plans] == [0, 1] and all(p["max_batch"] is None for p in plans)


def test_plan_bad_budget_exits_2():
    p = run_lbfl(["plan", "--memory-budget", "-1"], check=False)
    assert p.returncode == 2 and "--memory-budget" in p.stderr
