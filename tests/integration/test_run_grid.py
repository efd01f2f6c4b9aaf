"""jobs/run_grid.sh with stub launcher and lbfl commands: PATH... arguments, SEEDS, the argument list of
every `lbfl train` and the final `lbfl analyze` over all run directories."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ..conftest import ROOT, _env

SCRIPT = ROOT / "jobs" / "run_grid.sh"

# MPIEXEC stub: record the call, then run the command after "-n N" (the LBFL stub)
LAUNCHER = """\
import json, os, subprocess, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(["mpiexec", *sys.argv[1:]]) + "\\n")
sys.exit(subprocess.call(sys.argv[3:]))
"""
# LBFL stub: record the call; `train` writes a fake run directory (tests/unit/_fake_runs.py) whose
# final accuracy is 0.5 + 0.1 x seed, `analyze` is the real `lbfl analyze`
LBFL = """\
import json, os, subprocess, sys, tomllib
from pathlib import Path
sys.path.insert(0, os.environ["ROOT"])
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(["lbfl", *args]) + "\\n")
if args[0] == "analyze":
    sys.exit(subprocess.call([sys.executable, "-m", "lbfl_mpi", *args]))
from tests.unit._fake_runs import fake_run
cfg = tomllib.loads(Path(args[args.index("--config") + 1]).read_text())
sets = dict(args[i + 1].split("=", 1) for i, a in enumerate(args[:-1]) if a == "--set")
out = sets.get("run.out_dir", cfg["run"]["out_dir"])
seed = int(sets.get("run.seed", cfg["run"].get("seed", 0)))
fake_run(Path(out), final=0.5 + 0.1 * seed, seed=seed, name=cfg["run"]["name"],
         world_size=cfg["run"].get("world_size") or 1, train={"batch_size": cfg["train"]["batch_size"]})
"""


def _toml(path, name, out_dir, world_size, batch):
    path.write_text(textwrap.dedent(f"""\
        [run]
        out_dir = "{out_dir}"
        name = "{name}"
        world_size = {world_size}
        [train]
        batch_size = {batch}
        """))
    return path


@pytest.fixture
def grid(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("mpiexec", LAUNCHER), ("lbfl", LBFL)):
        (stubs / name).write_text(f"#!{sys.executable}\n{text}")
        (stubs / name).chmod(0o755)
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    runs = tmp_path / "runs"
    _toml(cfgs / "b_small.toml", "small", runs / "small", 2, 8)
    _toml(cfgs / "a_large.toml", "large", runs / "large", 0, 32)
    single = _toml(tmp_path / "extra.toml", "extra", runs / "extra", 1, 8)
    log = tmp_path / "log.jsonl"
    env = {**_env(), "MPIEXEC": str(stubs / "mpiexec"), "MPIEXEC_ARGS": "", "LBFL": str(stubs / "lbfl"),
           "PYTHON": sys.executable, "STUB_LOG": str(log), "ROOT": str(ROOT)}
    env.pop("SEEDS", None)

    def run(*args, **extra_env):
        p = subprocess.run([bash, str(SCRIPT), *map(str, args)], env={**env, **extra_env}, capture_output=True,
                           text=True, timeout=180, cwd=tmp_path)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return p, calls

    return run, cfgs, single, runs, stubs


def test_seeds_run_every_config_per_seed_and_analyze_groups_them(grid):
    """Reference: the command lines the script's header promises, written out by hand for 3 configs
    x 2 seeds, and the seed groups' mean over seeds 0 and 2 (0.5 + 0.1 x seed: 0.6)."""
    run, cfgs, single, runs, stubs = grid
    p, calls = run(cfgs, single, "--set", "train.steps=5", SEEDS="0 2")
    assert p.returncode == 0, p.stderr
    lbfl = str(stubs / "lbfl")
    expected = []
    for cfg, ranks, out in ((cfgs / "a_large.toml", 1, runs / "large"), (cfgs / "b_small.toml", 2, runs / "small"),
                            (single, 1, runs / "extra")):
        for s in (0, 2):
            train = ["train", "--config", str(cfg), "--set", "run.overwrite=true", "--set", "train.steps=5",
                     "--set", f"run.seed={s}", "--set", f"run.out_dir={out}/seed{s}"]
            expected += [["mpiexec", "-n", str(ranks), lbfl, *train], ["lbfl", *train]]
    dirs = [f"{runs / n}/seed{s}" for n in ("large", "small", "extra") for s in (0, 2)]
    assert calls == expected + [["lbfl", "analyze", *dirs]]
    for cfg in ("a_large.toml", "b_small.toml"):
        for s in (0, 2):
            assert f"=== {cfgs / cfg} seed {s} done in " in p.stderr
    assert "=== grid of 6 runs done in " in p.stderr
    table = p.stdout[p.stdout.index("mean +- std over seeds"):].splitlines()
    rows = {line.split()[0]: line.split() for line in table[2:5]}
    assert rows["large"][1:5] == ["2", "0,2", "0.6000", f"{0.1 * 2 ** 0.5:.4f}"]  # std of 0.5, 0.7
    assert set(rows) == {"large", "small", "extra"}
    assert "final test accuracy by global batch" in p.stdout  # B = 32 (large), 16 (small), 8 (extra)
    assert all((runs / n / f"seed{s}" / "summary.json").exists() for n in ("large", "small") for s in (0, 2))


def test_old_directory_form_without_seeds(grid):
    """Reference: the pre-SEEDS command line of run_grid.sh (config's own out_dir, no seed sets)."""
    run, cfgs, _, runs, stubs = grid
    p, calls = run(cfgs)
    assert p.returncode == 0, p.stderr
    trains = [c for c in calls if c[0] == "mpiexec"]
    assert trains == [["mpiexec", "-n", n, str(stubs / "lbfl"), "train", "--config", str(cfgs / f),
                       "--set", "run.overwrite=true"] for n, f in (("1", "a_large.toml"), ("2", "b_small.toml"))]
    assert calls[-1] == ["lbfl", "analyze", str(runs / "large"), str(runs / "small")]
    assert "=== grid of 2 runs done in " in p.stderr and "mean +- std over seeds" not in p.stdout


@pytest.mark.parametrize("args, env, reason", [
    (["{cfgs}"], {"SEEDS": "0 x"}, "SEEDS: x is not a non-negative integer"),
    (["{cfgs}", "--set", "run.seed=3"], {"SEEDS": "1"}, "conflicts with SEEDS"),
    (["{cfgs}", "--set", "run.out_dir=elsewhere"], {}, "run.out_dir comes from each TOML file"),
    (["{cfgs}/nothing.toml"], {}, "not a directory or a .toml file"),
    (["{runs}"], {}, "no *.toml files"),
    ([], {}, "usage:"),
])
def test_bad_arguments_exit_2_before_any_run(grid, args, env, reason):
    """Reference: the header's rule that bad input exits 2 before anything runs (no stub call)."""
    run, cfgs, _, runs, _ = grid
    os.makedirs(runs, exist_ok=True)
    p, calls = run(*[a.format(cfgs=cfgs, runs=runs) for a in args], **env)
    assert p.returncode == 2 and reason in p.stderr and calls == [], p.stderr


def test_skip_done_skips_completed_runs_only(grid):
    """SKIP_DONE=1: a run whose summary.json says completed is not launched again; one without it (never
    run, or killed) and one that stopped (outcome preempted) are; every run directory still goes to the
    analysis."""
    run, cfgs, single, runs, stubs = grid
    p, calls = run(cfgs, SEEDS="0 1")
    assert p.returncode == 0, p.stderr
    shutil.rmtree(runs / "small" / "seed1")
    shutil.rmtree(runs / "large" / "seed1")
    p, calls = run(cfgs, SEEDS="0 1", SKIP_DONE="1")
    assert p.returncode == 0, p.stderr
    trains = [c for c in calls if c[0] == "lbfl" and c[1] == "train"]
    assert [c[-1] for c in trains] == [f"run.out_dir={runs / 'large'}/seed1", f"run.out_dir={runs / 'small'}/seed1"]
    assert p.stderr.count("skipped, ") == 2
    assert calls[-1][:2] == ["lbfl", "analyze"] and len(calls[-1]) == 2 + 4
    stopped = runs / "small" / "seed0" / "summary.json"
    stopped.write_text(stopped.read_text().replace('"completed"', '"preempted"'))
    p, calls = run(cfgs, SEEDS="0", SKIP_DONE="1")  # the stub then refuses the existing directory
    assert f"=== {cfgs / 'b_small.toml'} seed 0: 2 ranks -> " in p.stderr
    assert f"=== {cfgs / 'a_large.toml'} seed 0: skipped, " in p.stderr
