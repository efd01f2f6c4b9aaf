"""The per-rank table and run records against closed forms on made-up run data: mean, median and p90
of each time (t_eval over the evaluations), t_straggle in the table, samples/s with and without
evaluation (from summary.json, or computed for a summary written before those keys), the 0-based
best step, a units map for every key given in seconds, and the comparison's mean t_compress over the
ranks that have one."""
import warnings

import numpy as np
import pytest
import torch

from lbfl_mpi.analysis.load import RankData, RunData
from lbfl_mpi.analysis.tables import RECORD_UNITS, TABLE_TIMES, format_comparison, format_run, run_record

from ..conftest import ROOT

MS = 1e-3


def _rank(r, t_compute, t_eval):
    n = len(t_compute)
    steps = {"step": np.arange(n), "batch_size": np.full(n, 8), "t_compute": np.array(t_compute),
             "t_data": np.full(n, 1 * MS), "t_sync": np.full(n, 2 * MS), "t_straggle": np.full(n, 3 * MS),
             "t_step": np.array(t_compute) + 6 * MS}
    ev = {"step": np.array([4, 9]), "test_acc": np.array([0.6, 0.5]), "test_loss": np.array([1.0, 1.2]),
          "t_eval": np.array(t_eval)}
    return RankData(rank=r, attrs={}, steps=steps, eval=ev)


def _run(summary):
    t = [k * MS for k in range(1, 11)]  # 1..10 ms: mean = median = 5.5 ms, p90 (linear) = 9.1 ms
    return RunData(path=ROOT, name="x", config={}, summary=summary,
                   ranks=[_rank(0, t, [0.5, 1.5]), _rank(1, t[::-1], [0.25, 0.75])])


def test_mean_median_p90_of_each_time():
    rec = run_record(_run(None))
    r0 = rec["ranks"][0]
    assert (r0["mean_t_compute"], r0["median_t_compute"]) == pytest.approx((5.5 * MS, 5.5 * MS))
    assert r0["p90_t_compute"] == pytest.approx(9.1 * MS)
    assert r0["mean_t_compute"] == float(np.mean(_run(None).ranks[0].steps["t_compute"]))  # as before
    assert (r0["mean_t_straggle"], r0["p90_t_straggle"]) == pytest.approx((3 * MS, 3 * MS))
    assert (r0["mean_t_eval"], r0["median_t_eval"], r0["p90_t_eval"]) == pytest.approx((1.0, 1.0, 1.4))
    assert r0["eval_time_s"] == pytest.approx(2.0) and rec["ranks"][1]["eval_time_s"] == pytest.approx(1.0)
    assert rec["best_step"] == 4  # from the evaluation log: the 0-based step of the best accuracy


def test_table_shows_the_three_statistics_and_t_straggle():
    lines = format_run(run_record(_run(None))).splitlines()
    head = next(i for i, x in enumerate(lines) if x.split()[:3] == ["rank", "rows", "stat"])
    assert lines[head].split()[3:3 + len(TABLE_TIMES)] == list(TABLE_TIMES)
    mean, median, p90 = (lines[head + 1 + i].split() for i in range(3))
    assert mean[:9] == ["0", "10", "mean", "1.00", "5.50", "3.00", "2.00", "11.50", "1000.00"]
    assert median == ["median", "1.00", "5.50", "3.00", "2.00", "11.50", "1000.00"]
    assert p90 == ["p90", "1.00", "9.10", "3.00", "2.00", "15.10", "1400.00"]


def test_samples_per_s_with_and_without_evaluation():
    # an older summary: samples and wall time only; rank 0's evaluations took 0.5 + 1.5 s
    old = run_record(_run({"samples": 160, "wall_time_s": 10.0, "samples_per_s": 16.0, "best_step": 9}))
    assert old["eval_time_s"] == pytest.approx(2.0)
    assert old["samples_per_s_no_eval"] == pytest.approx(160 / 8.0)
    assert old["best_step"] == 9  # summary.json's value wins
    new = run_record(_run({"samples": 160, "wall_time_s": 10.0, "samples_per_s": 16.0, "eval_time_s": 4.0,
                           "samples_per_s_no_eval": 26.5}))
    assert (new["eval_time_s"], new["samples_per_s_no_eval"]) == (4.0, 26.5)
    text = format_run(new)
    assert "16 samples/s (26 without evaluation), 10.0 s (4.0 s evaluation)" in text  # 26.5 rounds to even
    table = format_comparison([new, old]).splitlines()
    assert table[0].split()[-3:] == ["w/o", "eval", "outcome"]
    assert table[1].split()[-3:] == ["16", "26", "completed"] and table[2].split()[-3:] == ["16", "20", "completed"]


@pytest.mark.parametrize("t_compress, cell", [
    ([float("nan"), float("nan")], "nan"),        # no compression on any rank
    ([0.002, float("nan")], f"{0.002 * 1e3:.3f}"),
    ([0.002, 0.005], f"{(0.002 + 0.005) / 2 * 1e3:.3f}"),
])
def test_comparison_averages_the_ranks_finite_compress_times_without_a_warning(t_compress, cell):
    rec = run_record(_run(None))
    rec["ranks"] = [dict(rec["ranks"][0], mean_t_compress=t) for t in t_compress]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = format_comparison([rec]).splitlines()[1].split()
    head = format_comparison([rec]).splitlines()[0].split()
    assert row[head.index("t_compress") - 1] == cell  # "t_step ms" is two header words


def test_units_map_names_every_time_key():
    rec = run_record(_run(None))
    assert rec["units"] == RECORD_UNITS
    timed = [k for k in rec["ranks"][0] if k.split("_", 1)[0] in ("mean", "median", "p90") and "_t_" in k]
    assert len(timed) == 3 * (len(TABLE_TIMES) + 1)  # t_compress too
    assert all(RECORD_UNITS[f"ranks.{k}"] == "s" for k in timed)
    for key in ("wall_time_s", "eval_time_s", "epoch_time_s"):
        assert RECORD_UNITS[key] == "s"
    assert RECORD_UNITS["samples_per_s_no_eval"] == "samples/s" and RECORD_UNITS["ranks.idle_wait_share"] == "1"


def test_traffic_line_names_a_density_only_where_something_was_compressed():
    run = _run(None)
    for rank in run.ranks:
        rank.attrs["dense_bytes"] = 400
        rank.steps["synced"] = np.array([0, 1] * 5)
        rank.steps["bytes_sent"] = np.array([0, 100] * 5)
        rank.steps["density_actual"] = np.full(10, np.nan)  # dense exchange: nothing selected
    dense = next(x for x in format_run(run_record(run)).splitlines() if "traffic" in x)
    assert dense.strip() == "traffic (rank 0): 100 bytes per sync = 25.00 % of dense (400 bytes)"
    run.ranks[0].steps["density_actual"] = np.array([np.nan, 0.25] * 5)
    run.ranks[0].steps["t_compress"] = np.full(10, 2 * MS)
    sparse = next(x for x in format_run(run_record(run)).splitlines() if "traffic" in x)
    assert sparse.strip().endswith("(400 bytes), density 0.25, mean t_compress 2.00 ms")


@pytest.mark.parametrize("train, batch, want", [
    ({"lr": 0.02, "scale_lr": True, "base_batch": 64}, 2048, 0.02 * 2048 / 64),  # the linear rule's peak
    ({"lr": 0.02, "scale_lr": True}, 256, 0.02 * 256 / 32),  # base_batch's default, 32
    ({"lr": 0.05}, 512, 0.05),  # no scaling rule: train.lr itself
    ({"lr": 0.05}, None, 0.05),  # the batch does not matter without the rule
    ({"lr": 0.02, "scale_lr": True, "base_batch": 64}, None, None),  # it does with it: unknown
])
def test_record_and_table_show_the_peak_lr_beside_train_lr(train, batch, want):
    run = _run({"global_batch": batch} if batch else None)
    run.config = {"train": train}
    rec = run_record(run)
    assert rec["lr"] == train["lr"]  # train.lr as configured, unchanged
    if want is None:
        assert rec["peak_lr"] is None
    else:
        torch.testing.assert_close(rec["peak_lr"], want)
    table = format_comparison([rec]).splitlines()
    assert table[0].split()[4] == "peak_lr"
    assert table[1].split()[4] == ("-" if want is None else f"{want:g}")
