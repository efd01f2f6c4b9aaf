"""Units and evaluation time in the rank files: every dataset carries the ``units`` attribute of the
code's table (telemetry.UNITS), which is also the unit docs/run-dir.md gives; ``t_eval`` is logged per
evaluation and summary.json's samples/s without evaluation follows from it; ``t_straggle`` is exactly
0 without an emulated slowdown; a resumed file written before ``t_eval`` existed keeps its rows."""
import json
import re
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import load_config
from lbfl_mpi.telemetry import EVAL_COLUMNS, STEP_COLUMNS, UNITS, RankLog, StepTimer, open_rank_file, read_group
from lbfl_mpi.train import build_worker, train
from lbfl_mpi.train import step as step_module

RUN_DIR_DOC = Path(__file__).resolve().parents[2] / "docs" / "run-dir.md"
EVAL_SLEEP = 0.05


def _every_dataset(f: h5py.File):
    out = []
    f.visititems(lambda name, obj: out.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_units_table_covers_every_column():
    assert set(UNITS["steps"]) == set(STEP_COLUMNS) and set(UNITS["eval"]) == set(EVAL_COLUMNS)
    assert UNITS["eval"]["t_eval"] == "s" and UNITS["steps"]["bytes_sent"] == "bytes"
    assert all(u == "s" for c, u in UNITS["steps"].items() if c.startswith("t_"))


def test_docs_type_column_names_the_same_unit():
    """docs/run-dir.md rows read "| `col` | dtype[, unit] | ...": the unit is the code's (none for "1")."""
    text = RUN_DIR_DOC.read_text()
    for group in ("steps", "eval"):
        for col, unit in UNITS[group].items():
            rows = re.findall(rf"^\| `{col}` \| ([^|]+) \|", text, re.M)
            assert rows, col
            cells = [r.strip().split(", ", 1) for r in rows]
            want = [] if unit == "1" else [unit]
            assert any(c[1:] == want for c in cells), (group, col, rows, unit)


def _log(path, **kw):
    return RankLog(path, rank=0, world_size=1, config_json="{}", device="cpu", flush_every=2, **kw)


def test_resume_of_a_file_without_t_eval_keeps_equal_length_rows(tmp_path):
    """A file from before t_eval: its kept eval rows get NaN there, so no column is ragged (a ragged
    group is cut to its shortest column by read_group, which would drop the kept evaluations)."""
    path = tmp_path / "rank0000.h5"
    with h5py.File(path, "w", libver="latest") as f:
        st = f.create_group("steps")
        for c, dt in STEP_COLUMNS.items():
            st.create_dataset(c, data=np.arange(6).astype(dt), maxshape=(None,))
        ev = f.create_group("eval")
        ev.create_dataset("step", data=np.array([1, 3, 5]), maxshape=(None,))
        ev.create_dataset("test_loss", data=np.array([0.9, 0.5, 0.4]), maxshape=(None,))
        ev.create_dataset("test_acc", data=np.array([0.1, 0.5, 0.6]), maxshape=(None,))
    log = _log(path, resume_step=4)
    log.log_eval(4, 0.3, 0.7, 0.25)
    log.close()
    with open_rank_file(path) as f:
        ev = read_group(f, "eval")
        assert f["eval/t_eval"].attrs["units"] == "s"
    assert ev["step"].tolist() == [1, 3, 4] and ev["test_acc"].tolist() == [0.1, 0.5, 0.7]
    assert np.isnan(ev["t_eval"][:2]).all() and ev["t_eval"][2] == 0.25


class _Worker:
    def __init__(self, slowdown):
        self.slowdown = slowdown


def test_t_straggle_is_zero_without_emulation_and_the_sleep_with_it():
    timer = StepTimer(torch.device("cpu"))
    timer.start()
    time.sleep(0.01)
    timer.lap("compute")
    step_module.straggle(_Worker(1.0), timer, None)
    assert "straggle" not in timer.times and timer.get("straggle") == 0.0
    step_module.straggle(_Worker(3.0), timer, None)  # sleeps 2 x t_compute
    assert 2 * timer.get("compute") <= timer.get("straggle") < 2 * timer.get("compute") + 0.05


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory):
    """A 1-rank run (digits, mlp, 6 steps, evaluations after steps 2, 4 and 6) whose evaluations sleep
    EVAL_SLEEP s on top of their work, with the lbfl plan probes stored (a ``plan`` group)."""
    out = tmp_path_factory.mktemp("units") / "run"
    cfg = load_config(None, [f"run.out_dir={out}", "train.steps=6", "train.eval_every=2", "train.batch_size=8",
                             "model.name=mlp", "batching.plan_at_start=true", "batching.plan_probes=[1, 2, 4]"])
    worker = build_worker(cfg, Comm())
    evaluate_many = worker.evaluate_many  # every evaluation goes through it (Evaluator.run)

    def slow_evaluate_many(sets):
        time.sleep(EVAL_SLEEP)
        return evaluate_many(sets)

    worker.evaluate_many = slow_evaluate_many
    summary = train(worker)
    return out, summary


def test_every_dataset_has_the_units_of_the_table(one_rank_run):
    out, _ = one_rank_run
    with open_rank_file(out / "rank0000.h5") as f:
        datasets = _every_dataset(f)
        groups = {name.split("/")[0] for name, _ in datasets}
        assert groups == {"steps", "eval", "plan"}
        for name, d in datasets:
            group, col = name.split("/")
            assert col in UNITS[group], name  # no column outside the table
            assert d.attrs["units"] == UNITS[group][col], name


def test_t_eval_per_evaluation_and_samples_per_s_without_it(one_rank_run):
    out, summary = one_rank_run
    with open_rank_file(out / "rank0000.h5") as f:
        ev, st = read_group(f, "eval"), read_group(f, "steps")
    assert ev["step"].tolist() == [1, 3, 5]
    assert (ev["t_eval"] >= EVAL_SLEEP).all() and (ev["t_eval"] < EVAL_SLEEP + 5).all()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["eval_time_s"] == pytest.approx(float(ev["t_eval"].sum()))
    assert summary["step_time_s"] == pytest.approx(float(st["t_step"].sum()))
    want = summary["samples"] / (summary["wall_time_s"] - summary["eval_time_s"])
    assert summary["samples_per_s_no_eval"] == pytest.approx(want)
    assert summary["samples_per_s_no_eval"] > summary["samples_per_s"]
    assert summary["samples"] == 6 * 8
    assert summary["wall_time_s"] >= summary["eval_time_s"] + summary["step_time_s"]
    assert (st["t_straggle"] == 0.0).all()  # no emulated slowdown: exactly 0, not the timer's overhead
    best = int(np.argmax(ev["test_acc"]))
    assert summary["best_step"] == int(ev["step"][best])  # the 0-based index the eval group holds
