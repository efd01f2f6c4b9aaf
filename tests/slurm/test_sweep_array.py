"""slurm/sweep_array.sbatch under the private Slurm: an array of 2 configs x 2 seeds (SEEDS="0 1",
--array=0-3) writes 4 distinct run directories, <config>/seed<S>, each trained with its seed; one of
them equals a plain run of the same config and seed bitwise, and the two seeds of a config differ."""
from __future__ import annotations

import time
import tomllib

import torch

from ..conftest import run_lbfl
from .jobs import CPU, DEMO, SWEEP, JobLog, job_env, wait_done

STEPS = 12


def test_array_of_two_configs_by_two_seeds_writes_four_run_dirs(slurm, tmp_path):
    t_start = time.monotonic()
    grid = tmp_path / "grid"
    grid.mkdir()
    demo = DEMO.read_text()
    (grid / "bsp.toml").write_text(demo)
    (grid / "fedavg.toml").write_text(demo.replace('mode = "bsp"', 'mode = "fedavg"\nperiod = 4'))
    runs = tmp_path / "runs"
    log = JobLog(tmp_path / "array.out")
    job = slurm.sbatch(*CPU, "--ntasks=1", "--array=0-3", "--time=3", f"--output={tmp_path}/array-%a.out",
                       str(SWEEP), str(grid), "--set", f"train.steps={STEPS}", "--set", "train.eval_every=6",
                       env=job_env(SEEDS="0 1", OUT_ROOT=str(runs)), cwd=tmp_path)
    elements = [f"{job}_{i}" for i in range(4)]
    for e in elements:
        info = wait_done(slurm, e, log, timeout=150)
        out = (tmp_path / f"array-{e.split('_')[1]}.out").read_text()
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, out)
    expected = {runs / c / f"seed{s}": (c, s) for c in ("bsp", "fedavg") for s in (0, 1)}
    assert sorted(p for p in runs.glob("*/*") if p.is_dir()) == sorted(expected)
    for d, (c, s) in expected.items():
        cfg = tomllib.loads((d / "config.toml").read_text())
        assert (cfg["run"]["seed"], cfg["run"]["out_dir"], cfg["sync"]["mode"]) == (s, str(d), c), d
        assert (d / "summary.json").exists() and (d / "model.pt").exists(), sorted(d.iterdir())
    ref = tmp_path / "ref"
    run_lbfl(["train", "--config", str(grid / "fedavg.toml"), "--set", f"run.out_dir={ref}", "--set", "run.seed=1",
              "--set", f"train.steps={STEPS}", "--set", "train.eval_every=6"])
    a, b = torch.load(ref / "model.pt"), torch.load(runs / "fedavg" / "seed1" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    s0, s1 = torch.load(runs / "bsp" / "seed0" / "model.pt"), torch.load(runs / "bsp" / "seed1" / "model.pt")
    assert not all(torch.equal(s0[k], s1[k]) for k in s0)
    print(f"{slurm.version}: array of 2 configs x 2 seeds -> 4 run dirs, {time.monotonic() - t_start:.0f} s")


def test_array_refuses_an_index_past_the_grid_and_arguments_it_sets(slurm, tmp_path):
    """Exit 2 before anything starts: index 4 of 2 configs x 2 seeds, --set run.out_dir, a bad seed."""
    grid = tmp_path / "grid"
    grid.mkdir()
    for name in ("a", "b"):
        (grid / f"{name}.toml").write_text(DEMO.read_text())
    cases = {"index": (["--array=4"], [], "0 1"), "out_dir": (["--array=0"], ["--set", "run.out_dir=x"], "0 1"),
             "seed": (["--array=0"], ["--set", "run.seed=3"], "0 1"), "bad_seed": (["--array=0"], [], "0 x")}
    jobs = {}
    for case, (opts, args, seeds) in cases.items():
        jobs[case] = slurm.sbatch(*CPU, "--ntasks=1", "--time=3", *opts, f"--output={tmp_path}/{case}.out", str(SWEEP),
                                  str(grid), *args, env=job_env(SEEDS=seeds, OUT_ROOT=str(tmp_path / "runs")),
                                  cwd=tmp_path)
    expected = {"index": "array index 4 but {grid} holds 2 configs x 2 seeds (indices 0..3)",
                "out_dir": "run.out_dir=x: set by the array index (one run directory per config and seed); "
                           "not an argument here",
                "seed": "run.seed=3: set by the array index (one run directory per config and seed); "
                        "not an argument here",
                "bad_seed": "SEEDS: x is not a non-negative integer"}
    for case, job in jobs.items():
        info = wait_done(slurm, f"{job}_{cases[case][0][0].split('=')[1]}", JobLog(tmp_path / f"{case}.out"), 60)
        out = (tmp_path / f"{case}.out").read_text()
        assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", (case, info, out)
        assert out.strip().splitlines()[-1] == expected[case].format(grid=grid), (case, out)
    assert not (tmp_path / "runs").exists()
