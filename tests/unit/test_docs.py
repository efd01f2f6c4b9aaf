"""The README documents every config key, every HDF5 column and every key resume may change."""
from pathlib import Path

from lbfl_mpi.config import reference
from lbfl_mpi.run.rundir import RESUME_MAY_CHANGE
from lbfl_mpi.telemetry import EVAL_COLUMNS, STEP_COLUMNS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_config_key_is_in_the_readme():
    missing = [key for key, *_ in reference() if f"`{key}`" not in README]
    assert not missing


def test_every_hdf5_column_is_in_the_readme():
    missing = [c for c in (*STEP_COLUMNS, *EVAL_COLUMNS) if f"| `{c}` |" not in README]
    assert not missing


def test_resume_rules_are_in_the_readme():
    section = README[README.index("## Checkpoint and resume"):]
    assert all(f"`{k}`" in section for k in RESUME_MAY_CHANGE - {"run.resume", "run.overwrite"})
