"""The Fig. 1/2/5 batch sweep: the runner script over plan configs, and its table from the JSON."""
import json
import os
import subprocess
import sys

import pytest

from lbfl_mpi.analysis.sweep import format_sweep, load_plans, main

from ..conftest import ROOT, _env


def test_sweep_script_writes_plans_table_and_plot(tmp_path):
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    for m in ("mlp", "cnn"):
        (cfgs / f"{m}.toml").write_text(f'[model]\nname = "{m}"\n')
    env = {**_env(), "OUT": str(tmp_path / "out"), "LBFL": f"{sys.executable} -m lbfl_mpi", "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(ROOT / "jobs" / "run_batch_sweep.sh"), str(cfgs), "--probes", "1,2,4",
                        "--holdout", "3", "--rounds", "1", "--repeats", "1"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "batch_sweep.png").stat().st_size > 0
    plans = dict(load_plans([str(tmp_path / "out" / f"{m}.json") for m in ("cnn", "mlp")]))
    assert [r["batch"] for r in plans["mlp"]["rows"]] == [1, 2, 3, 4]
    for name, plan in plans.items():
        assert format_sweep(name, plan) in p.stdout
        for r in plan["rows"]:  # every measured t_c appears in the table, in ms
            assert f"{r['t_compute'] * 1e3:10.2f}" in p.stdout


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
