"""A run directory as pandas DataFrames (pandas is in the ``plots`` and ``all`` extras).

``load_run(dir)``: one row per (rank, step), columns ``rank`` and every column of the rank files'
``steps`` group, plus the ``eval`` group's ``test_loss``, ``test_acc``, ``t_eval``, ``val_loss`` and
``val_acc`` (data.val_fraction's split), ``train_loss``, ``train_acc`` and ``sharpness``
(train.eval_train_samples; NaN without them) joined on
(rank, step): the step after which the evaluation was taken (``step`` is the 0-based step index),
NaN on the steps without one. ``load_evals(dir)``: the evaluations alone, one row per (rank,
evaluation). Both read through the checked reader of load.py (a damaged file raises
:class:`~lbfl_mpi.analysis.load.AnalysisError` with a one-line message) and carry in ``df.attrs``
the run's ``path``, ``name``, ``config``, ``summary`` and ``units`` (column -> the ``units``
attribute of its HDF5 dataset: "s", "bytes", "samples", "samples/s" or "1").
"""
from __future__ import annotations

from pathlib import Path

from ..telemetry.h5log import EVAL_COLUMNS, STEP_COLUMNS, UNITS
from .load import RunData, read_run

EVAL_JOINED = tuple(c for c in EVAL_COLUMNS if c != "step")  # test_*, t_eval, val_*, train_*, sharpness


def _pandas():
    try:
        import pandas
    except ImportError as e:  # optional dependency
        raise RuntimeError("load_run needs pandas: pip install 'lbfl_mpi[plots]'") from e
    return pandas


def _frame(run: RunData, group: str, units: dict):
    pd = _pandas()
    parts = []
    for r in run.ranks:
        cols = r.steps if group == "steps" else r.eval
        n = min((len(v) for v in cols.values()), default=0)
        schema = list(STEP_COLUMNS if group == "steps" else EVAL_COLUMNS)  # columns in the schema's order
        names = [c for c in schema if c in cols] + sorted(c for c in cols if c not in schema)
        part = pd.DataFrame({"rank": [r.rank] * n, **{k: cols[k][:n] for k in names}})
        parts.append(part.astype({"rank": "int64"}))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"rank": []})
    if group == "eval":  # files written before t_eval or val_* existed
        for c in EVAL_JOINED:
            if c not in df.columns:
                df[c] = float("nan")
        df = df[["rank", *(c for c in EVAL_COLUMNS if c in df.columns),
                 *(c for c in df.columns if c != "rank" and c not in EVAL_COLUMNS)]]
    df.attrs.update(path=str(run.path), name=run.name, config=run.config, summary=run.summary,
                    units={"rank": "1", **{c: units.get(c, "1") for c in df.columns if c != "rank"}})
    return df


def load_evals(path: str | Path | RunData):
    """The ``eval`` rows of every rank: columns ``rank``, ``step``, ``test_loss``, ``test_acc``,
    ``t_eval``, ``val_loss``, ``val_acc``, ``train_loss``, ``train_acc``, ``sharpness`` (NaN in files
    written before they existed, and where a run did not measure them), sorted by rank then step."""
    run = path if isinstance(path, RunData) else read_run(path)
    return _frame(run, "eval", UNITS["eval"])


def load_run(path: str | Path | RunData):
    """One row per (rank, step) with the evaluation columns joined (see the module docstring)."""
    run = path if isinstance(path, RunData) else read_run(path)
    steps = _frame(run, "steps", UNITS["steps"])
    evals = _frame(run, "eval", UNITS["eval"])
    if "step" not in steps.columns:
        return steps
    if "step" in evals.columns:
        evals = evals.drop_duplicates(["rank", "step"], keep="last")
        df = steps.merge(evals[["rank", "step", *EVAL_JOINED]], on=["rank", "step"], how="left", sort=False)
    else:
        df = steps.assign(**{c: float("nan") for c in EVAL_JOINED})
    df.attrs = {**steps.attrs, "units": {**steps.attrs["units"], **{c: UNITS["eval"][c] for c in EVAL_JOINED}}}
    return df
