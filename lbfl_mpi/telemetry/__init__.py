"""Per-rank HDF5 logs, the step row they hold, and step timers.

``StepTimer`` (timers.py) needs torch and is loaded on first use, so that ``lbfl analyze``, which reads
rank files through this package, starts without importing torch."""
from .h5log import EVAL_COLUMNS, FL_GROUPS, STEP_COLUMNS, UNITS, RankLog, open_rank_file, read_group
from .step_row import StepRow

__all__ = ["EVAL_COLUMNS", "FL_GROUPS", "STEP_COLUMNS", "UNITS", "RankLog", "StepRow", "open_rank_file", "read_group",
           "StepTimer"]


def __getattr__(name: str):
    if name == "StepTimer":
        from .timers import StepTimer

        return StepTimer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
