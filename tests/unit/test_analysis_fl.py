"""The federated charts' numbers (analysis/plots_fl.py) against closed-form values on hand-made groups."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.testing import assert_close

from lbfl_mpi.analysis.load import RankData, RunData
from lbfl_mpi.analysis.plots_fl import drift, federated, participation, straggler_share


def _run():
    c0 = {"round": np.array([0, 0, 1]), "client": np.array([0, 2, 1]), "t_train": np.array([1.0, 2.0, 4.0]),
          "delta_norm": np.array([1.0, 3.0, 2.0]), "step": np.array([2, 2, 5])}
    c1 = {"round": np.array([0, 1]), "client": np.array([1, 2]), "t_train": np.array([1.0, 2.0]),
          "delta_norm": np.array([5.0, 4.0]), "step": np.array([2, 5])}
    rounds = {"round": np.array([0, 1]), "t_round": np.array([4.0, 5.0])}
    ranks = [RankData(0, {}, {}, {}, clients=c0, rounds=rounds), RankData(1, {}, {}, {}, clients=c1)]
    return RunData(Path("r"), "r", {"fl": {"clients": 4}, "sync": {"period": 3}}, None, ranks)


def test_participation_counts_every_client_including_those_never_sampled():
    assert list(participation(_run())) == [1, 2, 2, 0]


def test_drift_is_the_spread_of_each_rounds_delta_norms():
    rounds, mean, std = drift(_run())
    assert list(rounds) == [0, 1]
    assert_close(mean, np.array([3.0, 3.0]))
    assert_close(std, np.array([np.std([1.0, 3.0, 5.0]), np.std([2.0, 4.0])]))


def test_straggler_share_is_the_slowest_ranks_excess_over_the_mean():
    rounds, share = straggler_share(_run())
    # round 0: ranks trained 3 s and 1 s (mean 2, max 3) in a 4 s round; round 1: 4 s and 2 s in 5 s
    assert_close(share, np.array([(3 - 2) / 4, (4 - 3) / 5]))
    assert federated(_run()) and not federated(RunData(Path("r"), "r", {}, None, [RankData(0, {}, {}, {})]))


def test_without_rounds_rows_there_is_no_straggler_curve():
    run = _run()
    run.ranks[0].rounds = {}
    assert straggler_share(run)[0].size == 0
