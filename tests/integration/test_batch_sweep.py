"""The Fig. 1/2/5 batch sweep runner (jobs/run_batch_sweep.sh) over plan configs, calling the CLI."""
import subprocess
import sys

from lbfl_mpi.analysis.sweep import format_sweep, load_plans

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
