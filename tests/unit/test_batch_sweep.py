"""The Fig. 1/2/5 batch sweep table from plan JSON (the runner script: tests/integration/test_batch_sweep.py)."""
import json
import os

import pytest

from lbfl_mpi.analysis.sweep import format_sweep, main


def test_sweep_table_values_closed_form():
    plan = {"model": "m", "input_shape": [1, 8, 8], "device": "cpu", "alpha": 0.001, "beta": 0.002,
            "t_compute_err_median": 0.0, "recommended_batch": 4,
            "rows": [{"batch": 4, "t_compute": 0.009, "t_mov": 0.001, "samples_per_s": 400.0}]}
    row = format_sweep("m", plan).splitlines()[2].split()
    assert [float(x) for x in row] == pytest.approx([4, 9.0, 1.0, 10.0, 400.0, 2.25])


def test_sweep_rejects_a_file_that_is_not_a_plan(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"a": 1}))
    assert main([str(bad)]) == 2
    assert "not a `lbfl plan --json` file" in capsys.readouterr().err
    assert os.path.exists(bad)
