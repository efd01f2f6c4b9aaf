"""Offline analysis of run directories: ``lbfl analyze RUN_DIR [RUN_DIR ...] [--plots DIR] [--json]``."""
from __future__ import annotations

import json
import sys

from .load import AnalysisError, RunData, load_run
from .tables import format_comparison, format_run, run_record


def analyze_main(run_dirs: list[str], plots: str | None = None, as_json: bool = False) -> int:
    try:
        runs = [load_run(d) for d in run_dirs]
    except AnalysisError as e:
        print(f"lbfl analyze: error: {e}", file=sys.stderr)
        return 2
    records = [run_record(r) for r in runs]
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        print("\n\n".join(format_run(r) for r in records))
        if len(records) > 1:
            print("\n" + format_comparison(records))
    if plots:
        from .plots import write_plots

        for p in write_plots(runs, plots):
            print(f"wrote {p}", file=sys.stderr)
    return 0


__all__ = ["AnalysisError", "RunData", "load_run", "run_record", "analyze_main"]
