"""lbfl_mpi.analysis.load_run / load_evals (pandas) against the values h5py reads from the rank files
that RankLog wrote: one row per (rank, step), the evaluation columns joined on (rank, step), the
units of the datasets, and the same one-line error as ``lbfl analyze`` for a directory without runs."""
import json

import h5py
import numpy as np
import pytest

from lbfl_mpi.analysis import AnalysisError, load_evals, load_run
from lbfl_mpi.telemetry import EVAL_COLUMNS, STEP_COLUMNS, UNITS, RankLog

pd = pytest.importorskip("pandas")

STEPS = 7
EVALS = {0: [(2, 0.9, 0.4, 0.11), (6, 0.5, 0.8, 0.12)], 1: [(2, 0.9, 0.4, 0.21), (6, 0.5, 0.8, 0.22)]}


def _write_run(out):
    rng = np.random.default_rng(3)
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"name": "frame", "wall_time_s": 1.0}))
    for rank in (0, 1):
        log = RankLog(out / f"rank{rank:04d}.h5", rank=rank, world_size=2, config_json="{}", device="cpu",
                      flush_every=3)
        for s in range(STEPS):
            row = {c: (rng.random() if np.dtype(dt).kind == "f" else int(rng.integers(0, 100)))
                   for c, dt in STEP_COLUMNS.items()}
            log.log_step(**{**row, "step": s})
        for ev in EVALS[rank]:
            log.log_eval(*ev)
        log.close()
    return out


def test_load_run_equals_the_hdf5_columns(tmp_path):
    run = _write_run(tmp_path / "run")
    df = load_run(run)
    assert list(df.columns[:1]) == ["rank"] and len(df) == 2 * STEPS
    assert set(df.columns) == {"rank", *STEP_COLUMNS, *(c for c in EVAL_COLUMNS if c != "step")}
    for rank in (0, 1):
        part = df[df["rank"] == rank].sort_values("step")
        with h5py.File(run / f"rank{rank:04d}.h5", "r") as f:
            for col in STEP_COLUMNS:
                np.testing.assert_array_equal(part[col].to_numpy(), f["steps"][col][:], err_msg=col)
                assert part[col].dtype == f["steps"][col].dtype, col
            ev_steps, acc, t_eval = f["eval/step"][:], f["eval/test_acc"][:], f["eval/t_eval"][:]
        joined = part.dropna(subset=["test_acc"])
        np.testing.assert_array_equal(joined["step"].to_numpy(), ev_steps)
        np.testing.assert_array_equal(joined["test_acc"].to_numpy(), acc)
        np.testing.assert_array_equal(joined["t_eval"].to_numpy(), t_eval)
        assert part["test_acc"].isna().sum() == STEPS - len(ev_steps)
    assert df.attrs["units"] == {"rank": "1", **UNITS["steps"], **UNITS["eval"]} | {"step": "1"}
    assert df.attrs["name"] == "frame" and df.attrs["summary"]["wall_time_s"] == 1.0


def test_load_evals_one_row_per_rank_and_evaluation(tmp_path):
    ev = load_evals(_write_run(tmp_path / "run"))
    assert list(ev.columns) == ["rank", "step", "test_loss", "test_acc", "t_eval", "val_loss", "val_acc",
                                "train_loss", "train_acc", "sharpness"]
    assert ev[["val_loss", "val_acc", "train_loss", "sharpness"]].isna().all().all()  # none measured here
    got = [tuple(r) for r in ev[["step", "test_loss", "test_acc", "t_eval"]].itertuples(index=False)]
    assert got == EVALS[0] + EVALS[1] and ev["rank"].tolist() == [0, 0, 1, 1]
    assert ev.attrs["units"]["t_eval"] == "s"


def test_a_directory_without_rank_files_is_the_analyze_error(tmp_path):
    with pytest.raises(AnalysisError, match="not a run directory"):
        load_run(tmp_path)
