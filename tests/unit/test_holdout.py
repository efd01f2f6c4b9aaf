"""data.train_subset and data.val_fraction (data/holdout.py): the split against counts computed by
hand, its independence of the run seed and of the partition, and a run that evaluates the validation
split every time and the test set once, checked against a plain evaluation of the saved model."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import load_config
from lbfl_mpi.data import load_dataset, partition_indices
from lbfl_mpi.data.datasets import DataError
from lbfl_mpi.data.holdout import HoldoutError, holdout_indices
from lbfl_mpi.models import build_model
from lbfl_mpi.train import build_worker, train

from ..conftest import run_lbfl, tiny_run_args


def test_split_is_stratified_disjoint_and_fixed():
    labels = np.repeat(np.arange(3), [10, 20, 31])
    tr, va = holdout_indices(labels, 0, 0.25)
    # round(0.25 * n_k): 2 (2.5 rounds to even), 5, 8 (7.75)
    assert [int((labels[va] == k).sum()) for k in range(3)] == [2, 5, 8]
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(labels)))
    tr2, va2 = holdout_indices(labels, 0, 0.25)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)  # no seed argument: one split for all runs


def test_subset_then_split():
    labels = np.arange(1000) % 10
    tr, va = holdout_indices(labels, 300, 1 / 3)
    kept = np.concatenate([tr, va])
    assert len(tr) + len(va) == 300 and len(np.unique(kept)) == 300
    assert len(va) == sum(round(int((labels[kept] == k).sum()) / 3) for k in range(10))
    sub, none = holdout_indices(labels, 300, 0.0)
    assert np.array_equal(sub, np.sort(np.concatenate([tr, va]))) and len(none) == 0


@pytest.mark.parametrize("subset,frac,msg", [
    (1001, 0.0, "data.train_subset=1001 exceeds the 1000 training samples"),
    (10, 0.01, "data.val_fraction=0.01 of 10 samples leaves 10 for training and 0 for validation"),
])
def test_impossible_splits_name_the_value(subset, frac, msg):
    with pytest.raises(HoldoutError, match=msg.replace(".", r"\.")):
        holdout_indices(np.arange(1000) % 10, subset, frac)


def test_bundle_and_partition_exclude_the_validation_split():
    cfg = load_config(None, ["data.val_fraction=0.2", "data.train_subset=1000"]).data
    b = load_dataset(cfg)
    full = load_dataset(load_config(None, []).data)
    assert len(b.train) + len(b.val) == 1000 and len(b.val) == 200
    assert np.array_equal(b.train_labels, b.train.y.numpy())
    # every validation sample is a training sample of the full set, none is a client's
    rows = {tuple(r) for r in full.train.x.reshape(len(full.train), -1).numpy().round(5)}
    assert all(tuple(r) in rows for r in b.val.x.reshape(len(b.val), -1).numpy().round(5))
    parts = partition_indices(b.train_labels, 3, "iid", seed=1)
    assert sum(len(p) for p in parts) == len(b.train) == 800
    assert torch.equal(b.test.x, full.test.x)  # the test set is untouched
    with pytest.raises(DataError, match=r"data\.train_subset=99999 exceeds .* of data\.name='digits'"):
        load_dataset(load_config(None, ["data.train_subset=99999"]).data)


def _evaluate(model, data):
    model.eval()
    with torch.no_grad():
        out = model(data.x)
    return float(F.cross_entropy(out, data.y)), float((out.argmax(1) == data.y).double().mean())


def test_run_evaluates_validation_each_time_and_test_once(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.out_dir={run}", "train.steps=9", "train.eval_every=3", "train.batch_size=16",
                             "model.name=mlp", "data.val_fraction=0.25", "telemetry.flush_every=1"])
    summary = train(build_worker(cfg, Comm()))
    with h5py.File(run / "rank0000.h5", "r") as f:
        ev = {k: f["eval"][k][:] for k in ("step", "test_acc", "test_loss", "val_acc", "val_loss")}
    assert ev["step"].tolist() == [2, 5, 8]
    assert np.isfinite(ev["val_acc"]).all() and np.isnan(ev["test_acc"][:-1]).all()
    b = load_dataset(cfg.data)
    model = build_model("mlp", b.input_shape, b.num_classes)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    test_loss, test_acc = _evaluate(model, b.test)
    val_loss, val_acc = _evaluate(model, b.val)
    torch.testing.assert_close((ev["test_loss"][-1], ev["test_acc"][-1]), (test_loss, test_acc), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((ev["val_loss"][-1], ev["val_acc"][-1]), (val_loss, val_acc), rtol=1e-5, atol=1e-6)
    best = int(np.argmax(ev["val_acc"]))
    assert summary["best_step"] == int(ev["step"][best]) and summary["best_val_acc"] == ev["val_acc"][best]
    assert summary["final_test_acc"] == summary["best_test_acc"] == ev["test_acc"][-1]
    assert summary["val_samples"] == len(b.val)
    assert json.loads((run / "summary.json").read_text())["final_val_acc"] == ev["val_acc"][-1]
    # the progress lines name the set their accuracy is of: validation until the test set is measured
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("step ")]
    assert [x.split(" loss ")[0] for x in lines] == [f"step {n}/9" for n in range(1, 10)]
    assert [" ".join(x.split()[4:]) for x in lines] == ["", "", *[f"val_acc {ev['val_acc'][0]:.4f}"] * 3,
                                                        *[f"val_acc {ev['val_acc'][1]:.4f}"] * 3,
                                                        f"test_acc {ev['test_acc'][-1]:.4f}"]


def test_run_without_split_keeps_test_every_time(tmp_path):
    run = tmp_path / "run"
    summary = train(build_worker(load_config(None, [f"run.out_dir={run}", "train.steps=6", "train.eval_every=3",
                                                    "model.name=mlp"]), Comm()))
    with h5py.File(run / "rank0000.h5", "r") as f:
        assert np.isfinite(f["eval"]["test_acc"][:]).all() and np.isnan(f["eval"]["val_acc"][:]).all()
    assert "best_val_acc" not in summary


@pytest.mark.parametrize("setting,msg", [
    ("data.val_fraction=0.95", "data.val_fraction"),
    ("data.train_subset=5000", "data.train_subset=5000 exceeds the 1437 training samples"),
])
def test_cli_bad_split_is_one_line_exit_2(tmp_path, setting, msg):
    p = run_lbfl(tiny_run_args(tmp_path / "r", setting), check=False)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[0], p.stderr
    assert not (tmp_path / "r").exists()


def test_federated_run_evaluates_validation_then_test_once(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.out_dir={run}", "train.steps=8", "train.eval_every=4", "train.batch_size=8",
                             "model.name=mlp", "data.val_fraction=0.1", "fl.clients=3", "sync.mode=fedavg",
                             "sync.period=2", "telemetry.flush_every=1"])
    summary = train(build_worker(cfg, Comm()))
    with h5py.File(run / "rank0000.h5", "r") as f:
        val, test = f["eval"]["val_acc"][:], f["eval"]["test_acc"][:]
    assert np.isfinite(val).all() and np.isnan(test[:-1]).all() and np.isfinite(test[-1])
    b = load_dataset(cfg.data)
    model = build_model("mlp", b.input_shape, b.num_classes)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    torch.testing.assert_close(summary["final_test_acc"], _evaluate(model, b.test)[1], rtol=1e-6, atol=1e-9)
    assert summary["partition_sizes"] and sum(summary["partition_sizes"]) == len(b.train)


def test_analysis_follows_the_validation_curve(tmp_path):
    from lbfl_mpi.analysis.load import read_run

    run = tmp_path / "run"
    train(build_worker(load_config(None, [f"run.out_dir={run}", "train.steps=6", "train.eval_every=2",
                                          "model.name=mlp", "data.val_fraction=0.2"]), Comm()))
    with h5py.File(run / "rank0000.h5", "r") as f:
        want = f["eval"]["val_acc"][:]
    steps, acc, kind = read_run(run).monitored()
    assert kind == "val" and steps.tolist() == [1, 3, 5]
    np.testing.assert_array_equal(acc, want)


def test_adascale_ending_early_still_measures_the_test_set(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.out_dir={run}", "train.steps=40", "train.eval_every=5", "train.batch_size=16",
                             "model.name=mlp", "data.val_fraction=0.2", "scaling.method=adascale",
                             "scaling.small_batch=4", "train.base_batch=4"])
    summary = train(build_worker(cfg, Comm()))
    with h5py.File(run / "rank0000.h5", "r") as f:
        test, steps = f["eval"]["test_acc"][:], f["eval"]["step"][:]
    assert summary["steps_done"] < 40 and steps[-1] == summary["steps_done"] - 1  # AdaScale's progress ended it
    assert np.isfinite(test[-1]) and np.isnan(test[:-1]).all() and summary["final_test_acc"] == test[-1]
