"""Per-rank HDF5 logs, the step row they hold, and step timers."""
from .h5log import EVAL_COLUMNS, STEP_COLUMNS, RankLog, open_rank_file, read_group
from .step_row import StepRow
from .timers import StepTimer

__all__ = ["EVAL_COLUMNS", "STEP_COLUMNS", "RankLog", "StepRow", "open_rank_file", "read_group", "StepTimer"]
