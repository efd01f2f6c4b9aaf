"""The traps that warn: each rule checked at its exact boundary, on the warning side and the other.

Start-up (the trainer prints them once, on rank 0): classes that no client holds, a client with fewer
samples than its batch, a preemption that cannot be honoured before the end (FedAvg); ``lbfl plan``: a
fit error above 20 % at any batch, an Eq. 2 optimum at the edge of the probes; the end of a run: final
accuracy near chance or far below its best (lbfl_mpi/accuracy.py)."""
from __future__ import annotations

import numpy as np
import pytest

from lbfl_mpi.accuracy import accuracy_warning, config_num_classes, near_chance_limit
from lbfl_mpi.config import Config
from lbfl_mpi.data.partition import partition_indices, partition_warnings
from lbfl_mpi.plan.recommend import plan_warnings
from lbfl_mpi.run.stopping import preemption_warnings

LABELS = np.repeat(np.arange(10), 100)   # 10 classes, 100 training samples each
TEST = np.repeat(np.arange(10), 30)


def test_classes_no_client_holds_warn_with_the_accuracy_cap():
    parts = partition_indices(LABELS, 4, "labels", 0, 1)  # 4 clients, 1 label each: 4 of 10 classes held
    held = sorted({int(c) for p in parts for c in LABELS[p]})
    unseen = [c for c in range(10) if c not in held]
    (line,) = partition_warnings(parts, LABELS, 10, [16] * 4, "labels", TEST)
    assert line == (f"data.partition='labels' on 4 clients leaves 6 of 10 classes held by no client (classes "
                    f"{', '.join(map(str, unseen))}): test accuracy is capped at 0.4000 (the share of test samples "
                    "in the 4 classes held)")
    # the cap is the share of *test* samples in the held classes: an unbalanced test set moves it
    test = np.concatenate([np.full(70, held[0]), np.arange(10).repeat(3)])  # 70 + 30 samples, 70 + 12 held
    (line,) = partition_warnings(parts, LABELS, 10, [16] * 4, "labels", test)
    assert f"capped at {82 / 100:.4f}" in line
    # every class held (10 clients, 1 label each; or iid): no warning
    assert partition_warnings(partition_indices(LABELS, 10, "labels", 0, 1), LABELS, 10, [16] * 10, "labels",
                              TEST) == []
    assert partition_warnings(partition_indices(LABELS, 4, "iid", 0), LABELS, 10, [16] * 4, "iid", TEST) == []


def test_a_client_with_fewer_samples_than_its_batch_warns():
    parts = partition_indices(LABELS, 10, "labels", 0, 1)  # 100 samples per client
    assert partition_warnings(parts, LABELS, 10, [100] * 10, "labels") == []  # a batch of exactly 100 fits
    sizes = [100] * 10
    sizes[3] = 101
    (line,) = partition_warnings(parts, LABELS, 10, sizes, "labels")
    assert line == ("data.partition='labels' leaves 1 client with fewer training samples than a batch (samples < "
                    "batch: client 3: 100 < 101): every batch of such a client repeats samples")


def _cfg(**kw) -> Config:
    cfg = Config()
    cfg.sync.mode, cfg.sync.period, cfg.train.steps = kw.get("mode", "fedavg"), kw.get("period", 300), 300
    cfg.run.preempt_check_every = kw.get("check", 0)
    cfg.run.checkpoint_every = kw.get("ckpt", 0)
    cfg.run.preempt_signals = kw.get("signals", ["SIGUSR1", "SIGTERM"])
    return cfg


def test_a_preemption_fedavg_cannot_honour_before_the_end_warns():
    """A signal is acted on at an agreement after step done < train.steps: under FedAvg the first comes at
    min(sync.period, run.preempt_check_every, run.checkpoint_every), zeros left out (run/stopping.py)."""
    (line,) = preemption_warnings(_cfg(period=300), 2)  # the first average is the last step: too late
    assert line.startswith("sync.mode='fedavg' with sync.period=300, run.preempt_check_every=0, "
                           "run.checkpoint_every=0 for train.steps=300: a preemption signal (SIGUSR1, SIGTERM)")
    assert line.endswith("set run.preempt_check_every (e.g. 30)")
    assert len(preemption_warnings(_cfg(period=301, ckpt=300, check=500), 2)) == 1
    assert preemption_warnings(_cfg(period=299), 2) == []            # an average before the end
    assert preemption_warnings(_cfg(period=1000, check=299), 2) == []
    assert preemption_warnings(_cfg(period=1000, ckpt=299), 2) == []
    assert preemption_warnings(_cfg(period=1000), 1) == []           # one rank agrees every step
    assert preemption_warnings(_cfg(period=1000, mode="bsp"), 2) == []
    assert preemption_warnings(_cfg(period=1000, signals=[]), 2) == []  # no signal is caught at all


def _plan(errs=(0.01, 0.02, 0.03), eq2=2, world=1, epoch=1.0) -> dict:
    rows = [{"batch": b, "mem_err": 0.0, "t_compute_err": e} for b, e in zip((1, 2, 4), errs)]
    return {"rank": 0, "world_size": world, "rows": rows, "eq2_batch": eq2, "eq2_epoch_time": epoch}


def test_plan_warns_about_a_fit_error_above_20_percent_at_any_batch():
    assert plan_warnings(_plan(errs=(0.01, 0.20, 0.03)), [1, 2, 4]) == []  # 20 % exactly is not above
    (line,) = plan_warnings(_plan(errs=(0.01, 0.69, 0.03)), [1, 2, 4])    # the median (3 %) hides it
    assert line == ("the t_compute fit (alpha + beta b) is off by 69.0 % at b=2 (above 20 % at 1 of 3 batches, "
                    "whatever the median says); rerun with more --rounds and --repeats, or probe the batches you "
                    "will train with")
    (line,) = plan_warnings(_plan(errs=(0.01, 0.69, 0.03), world=2), [1, 2, 4])
    assert line.startswith("rank 0: the t_compute fit")


@pytest.mark.parametrize("eq2,hint", [(4, "largest probe, at the edge of the probed range (1..4); probe larger"),
                                      (1, "smallest probe, at the edge of the probed range (1..4); probe smaller")])
def test_plan_warns_about_an_eq2_optimum_at_the_edge_of_the_probes(eq2, hint):
    (line,) = plan_warnings(_plan(eq2=eq2), [1, 2, 4])
    assert line == f"the Eq. 2 optimum b={eq2} is the {hint} batches"
    assert plan_warnings(_plan(eq2=2), [1, 2, 4]) == []            # inside the range
    assert plan_warnings(_plan(eq2=8, epoch=None), [1, 2, 4]) == []  # the unmeasured memory cap: no probe fits
    assert plan_warnings(_plan(eq2=4), [4]) == []                  # one probe has no range to be at the edge of


def test_near_chance_limit_is_1_5_chance_at_most_5_points_above_it():
    assert near_chance_limit(10) == pytest.approx(0.15)
    assert near_chance_limit(2) == pytest.approx(0.55)
    assert near_chance_limit(100) == pytest.approx(0.015)


def test_accuracy_warnings_at_their_boundaries():
    assert accuracy_warning(0.15, 0.15, 10) == ("final test accuracy 0.1500 is near chance (1/10 = 0.1000): the "
                                                "model did not learn; check train.lr, the partition and the "
                                                "classes the clients hold")
    assert accuracy_warning(0.1501, 0.1501, 10) is None
    # far below the best: more than 0.2 under it, or under half of it
    assert accuracy_warning(0.7, 0.9, 10) is None
    assert accuracy_warning(0.6999, 0.9, 10, 49) == ("final test accuracy 0.6999 is far below the best 0.9000 at "
                                                     "step 49: the run diverged after its best evaluation; a "
                                                     "smaller train.lr usually fixes it")
    assert accuracy_warning(0.15, 0.3, 100) is None
    assert accuracy_warning(0.1499, 0.3, 100) is not None
    both = accuracy_warning(0.0972, 0.9139, 10, 49)
    assert both.startswith("final test accuracy 0.0972 is near chance (1/10 = 0.1000) and far below the best "
                           "0.9139 at step 49: the run diverged")
    assert accuracy_warning(float("nan"), 0.9, 10) is None  # the outcome (non-finite) says it
    assert accuracy_warning(0.1, 0.1, None) is None         # class count unknown: no chance rule


def test_class_count_from_a_run_config():
    assert config_num_classes({"data": {"name": "cifar100"}}) == 100
    assert config_num_classes({"data": {"name": "synthetic", "synthetic_classes": 3}}) == 3
    assert config_num_classes({"data": {"name": "synthetic"}}) == 10
    assert config_num_classes({}) is None and config_num_classes({"data": {"name": 5}}) is None
