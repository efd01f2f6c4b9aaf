"""Per-rank HDF5 logs and step timers."""
from .h5log import EVAL_COLUMNS, STEP_COLUMNS, RankLog, open_rank_file, read_group
from .timers import StepTimer

__all__ = ["EVAL_COLUMNS", "STEP_COLUMNS", "RankLog", "open_rank_file", "read_group", "StepTimer"]
