"""Offline analysis of run directories: ``lbfl analyze RUN_DIR [RUN_DIR ...] [--plots DIR] [--json]``.

After the per-run tables come, when they apply, a "mean +- std over seeds" table (when a group of runs
whose configs differ only in run.seed and bookkeeping keys holds 2 or more distinct seeds, seeds.py;
copies of one run are no seed study) and a "final test accuracy by global batch" table (at least 2
distinct global batches, batch.py; ``--plots`` then also writes ``accuracy_vs_batch.png``).
``--json`` stays a list of run records (existing readers index it); each record also carries its
``seed_group`` (the group's summary) and ``batch_series`` (the labels of the series it is a point of).
A RUN_DIR that holds no rank files but run directories below it (``runs/demo`` with ``bsp/`` and
``fedavg/``) stands for each of them, with one note on stderr (load.py: ``find_runs``).

Bad input (a damaged rank file, an invalid summary.json or config.toml, an unusable ``--plots``
directory) ends with one line ``lbfl analyze: error: <path>: <reason>`` and exit code 2; every rank
file is checked before HDF5 opens it (telemetry/validate.py), so a truncated copy cannot hang it.

From Python: ``read_run(dir)`` gives a run's arrays (:class:`RunData`, load.py); ``load_run(dir)`` a
pandas DataFrame with one row per (rank, step) and the evaluations joined, ``load_evals(dir)`` the
evaluations alone (frame.py; pandas is in the ``plots`` extra).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..files import dumps_strict, printable
from .batch import batch_series, batches, format_batch_table
from .frame import load_evals, load_run
from .load import AnalysisError, RunData, expand_run_dirs, read_run
from .seeds import format_seed_groups, group_seeds, summarise
from .tables import format_comparison, format_run, run_record

BAD_INPUT = 2


def _error(msg: str, code: int = BAD_INPUT) -> int:
    print(f"lbfl analyze: error: {printable(msg)}", file=sys.stderr)  # paths and reasons come from files
    return code


def _printable(obj):
    """``obj`` with every string made printable (files.printable), for the text tables: a name, a path
    or an outcome read from a file must not drive the terminal or forge a line."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {k: _printable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_printable(v) for v in obj]
    return obj


def plots_dir(path: str) -> Path:
    """Create the ``--plots`` directory before any output, so that an unusable one is bad input."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f"{path}: cannot create the plots directory ({e.strerror or e})") from None
    return out


def _write_plots(runs: list[RunData], out: Path) -> int:
    from .plots import write_plots

    try:
        written = write_plots(runs, out)
    except OSError as e:
        return _error(f"{e.filename or out}: cannot write plots ({e.strerror or e})")
    except RuntimeError as e:  # matplotlib missing: not bad input
        return _error(str(e), 1)
    for p in written:
        print(f"wrote {p}", file=sys.stderr)
    return 0


def analyze_main(run_dirs: list[str], plots: str | None = None, as_json: bool = False,
                 trace: str | None = None) -> int:
    try:
        paths, notes = expand_run_dirs(run_dirs)  # a directory of runs stands for each run in it
        for note in notes:
            print(f"lbfl analyze: {note}", file=sys.stderr)
        if trace is not None and len(paths) != 1:
            raise AnalysisError(f"--trace {trace}: needs exactly one run directory, got {len(paths)}")
        runs = [read_run(d) for d in paths]
        out = plots_dir(plots) if plots else None
    except AnalysisError as e:
        return _error(str(e))
    if trace is not None:
        from .trace import write_trace

        try:
            n = write_trace(runs[0], trace)
        except OSError as e:
            return _error(f"--trace {trace}: {e.strerror or e}")
        print(f"lbfl analyze: wrote {trace}: {n} trace events of {len(runs[0].ranks)} ranks", file=sys.stderr)
    records = [run_record(r) for r in runs]
    groups = group_seeds(runs)
    summaries = summarise(groups, runs, records)
    series = batch_series(runs, groups)
    for g, s in zip(groups, summaries):
        for i in g.members:
            records[i]["seed_group"] = s
    for i, rec in enumerate(records):
        rec["batch_series"] = [s.label for s in series if i in s.members]
    if as_json:
        print(dumps_strict(records, indent=2))
    else:
        records = [_printable(rec) for rec in records]  # names, paths, outcomes come from files
        print("\n\n".join(format_run(r) for r in records))
        if len(records) > 1:
            print("\n" + format_comparison(records))
        if any(s["n"] > 1 for s in summaries):  # distinct seeds: not for copies of one run
            print("\n" + format_seed_groups(summaries))
        if len(batches(series)) > 1:
            print("\n" + format_batch_table(series))
    return _write_plots(runs, out) if out is not None else 0


__all__ = ["AnalysisError", "RunData", "read_run", "load_run", "load_evals", "run_record", "analyze_main"]
