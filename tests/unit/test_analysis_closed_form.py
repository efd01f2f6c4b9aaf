"""Analysis quantities on made-up run data against closed forms: idle-wait share, epoch time against
the ideal (the plots' quantities: test_analysis_plots.py)."""

import numpy as np
import pytest

from ..conftest import ROOT


def test_idle_wait_share_closed_form():
    from lbfl_mpi.analysis.load import RankData, RunData
    from lbfl_mpi.analysis.tables import idle_wait_share, run_record

    def rank(r, t_sync, t_step, b):
        steps = {"t_sync": np.array(t_sync), "t_step": np.array(t_step), "batch_size": np.array(b),
                 "step": np.arange(len(t_sync))}
        return RankData(rank=r, attrs={}, steps=steps, eval={})

    run = RunData(path=ROOT, name="x", config={}, summary=None, ranks=[
        rank(0, [0.5, 0.4], [1.0, 1.0], [8, 8]), rank(1, [0.1, 0.2], [1.0, 1.0], [8, 12])])
    assert idle_wait_share(run) == pytest.approx([(0.4 + 0.2) / 2.0, 0.0])
    rec = run_record(run)
    assert [r["batch_changes"] for r in rec["ranks"]] == [0, 1] and rec["ranks"][1]["final_batch"] == 12


def test_epoch_time_against_ideal_closed_form():
    from lbfl_mpi.analysis.load import RankData, RunData
    from lbfl_mpi.analysis.tables import epoch_vs_ideal

    def rank(r, b, t_compute, t_straggle, t_step):
        steps = {"batch_size": np.array(b), "t_compute": np.array(t_compute), "t_straggle": np.array(t_straggle),
                 "t_step": np.array(t_step), "step": np.arange(len(b))}
        return RankData(rank=r, attrs={}, steps=steps, eval={})

    # rank 0 computes 10 samples/s, rank 1 (with its emulated slowdown) 5 samples/s; steps take 1.1 s
    # and 1.3 s on the slower rank; 2 steps x 15 samples = 30 samples out of D = 60
    run = RunData(path=ROOT, name="x", config={}, summary={"partition_sizes": [30, 30]}, ranks=[
        rank(0, [10, 10], [1.0, 1.0], [0.0, 0.0], [1.1, 1.2]),
        rank(1, [5, 5], [0.5, 0.5], [0.5, 0.5], [1.3, 1.2])])
    got = epoch_vs_ideal(run)
    actual = 60 * (1.3 + 1.2) / 30
    ideal = 60 / (10 + 5)
    assert got == pytest.approx({"epoch_time_s": actual, "ideal_epoch_time_s": ideal, "epoch_vs_ideal": actual / ideal})

