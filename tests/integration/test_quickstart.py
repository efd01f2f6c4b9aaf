"""README.md's Quick start, run exactly as printed: the commands are read from the ``sh`` block under
"## Quick start" and run one by one with bash in a fresh directory that holds only a link to jobs/
(so runs/, plots/ and exp.toml land there). ``source .venv/bin/activate`` becomes .venv/bin (this
interpreter's bin directory) first on PATH. Each command must exit 0 and print what the README says.
Costs about 80 s of CPU time: a 1-rank and a 4-rank run of jobs/demo.toml (300 steps each)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lbfl_mpi.accuracy import near_chance_limit
from lbfl_mpi.config import load_config

from ..conftest import ROOT, _env

ACTIVATE = "source .venv/bin/activate"
FINAL = re.compile(r"^final test acc (\d\.\d{4})  best (\d\.\d{4}) at step \d+ \(0-based\)  .* -> (\S+)$", re.M)


def quickstart_commands(readme: str) -> list[str]:
    """The command lines of the first ``sh`` block after "## Quick start", without blank and comment lines."""
    section = readme.split("\n## Quick start\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """Every Quick start command's (command, CompletedProcess), run in order in one fresh directory."""
    cwd = tmp_path_factory.mktemp("quickstart")
    (cwd / "jobs").symlink_to(ROOT / "jobs")
    env = _env()
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "lbfl").exists():
        pytest.fail(f"{bin_dir / 'lbfl'} is missing: install the project (pip install -e .) into this interpreter")
    env["PATH"] = str(bin_dir) + os.pathsep + env["PATH"]
    done = []
    for cmd in quickstart_commands((ROOT / "README.md").read_text()):
        if cmd.split("#")[0].strip() == ACTIVATE:
            continue  # .venv/bin is first on PATH already
        p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{cmd!r} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        done.append((cmd, p))
    return cwd, done


def _runs(done, prefix: str):
    found = [(c, p) for c, p in done if c.startswith(prefix)]
    assert found, f"the Quick start has no command starting with {prefix!r}"
    return found


def test_the_quick_start_block_is_what_this_test_expects():
    cmds = quickstart_commands((ROOT / "README.md").read_text())
    assert cmds[0].startswith(ACTIVATE)
    assert any(c.startswith("lbfl train ") for c in cmds) and any(c.startswith("mpiexec -n 4 ") for c in cmds)
    assert sum(c.startswith("lbfl analyze ") for c in cmds) >= 3


def test_both_demo_runs_end_well_above_chance_without_a_warning(quickstart):
    cwd, done = quickstart
    trains = _runs(done, "lbfl train ") + _runs(done, "mpiexec ")
    for cmd, p in trains:
        (final, best, out), = FINAL.findall(p.stdout)
        # the README: both runs end near 0.98 on digits; never near chance (0.15 for 10 classes)
        assert float(final) > max(0.9, near_chance_limit(10)) and float(best) >= float(final), (cmd, p.stdout)
        assert "lbfl: warning:" not in p.stderr, (cmd, p.stderr)
        summary = json.loads((cwd / out / "summary.json").read_text())
        assert f"{summary['final_test_acc']:.4f}" == final and summary["outcome"] == "completed"
        ranks = 4 if cmd.startswith("mpiexec -n 4 ") else 1
        assert summary["world_size"] == ranks and len(list((cwd / out).glob("rank*.h5"))) == ranks


def test_analyze_prints_tables_plots_and_json_of_the_runs_above(quickstart):
    cwd, done = quickstart
    trained = {FINAL.search(p.stdout).group(3): FINAL.search(p.stdout).group(1)
               for _, p in _runs(done, "lbfl train ") + _runs(done, "mpiexec ")}
    for cmd, p in _runs(done, "lbfl analyze "):
        args = cmd.split("#")[0].split()[2:]
        dirs = [a for a in args if not a.startswith("--") and a != "plots/"]
        if "--json" in args:
            recs = json.loads(p.stdout)
            assert {r["run"]: f"{r['final_test_acc']:.4f}" for r in recs} == {d: trained[d] for d in dirs}
            assert all(r["accuracy_warning"] is None for r in recs)
            continue
        shown = re.findall(r"^== \S+  \((\S+)\)$", p.stdout, re.M)
        runs = sorted(trained) if dirs == ["runs"] else dirs  # a directory of runs stands for each run in it
        assert shown == runs, (cmd, p.stdout)
        for d in runs:
            assert f"final test acc {trained[d]}" in p.stdout.split(f"({d})", 1)[1]
        assert p.stdout.count("times in ms: mean, median and p90") == len(runs)
        if len(runs) > 1:
            assert re.search(r"^run +sync +scaling .* final_acc +best_acc ", p.stdout, re.M), p.stdout
        if dirs == ["runs"]:
            assert p.stderr == f"lbfl analyze: runs holds {len(runs)} run directories; analysing each: " \
                               f"{', '.join(runs)}\n"
        if "--plots" in args:
            assert (cwd / "plots" / "convergence.png").stat().st_size > 1000


def test_config_lines_print_the_keys_and_a_template_that_loads(quickstart):
    cwd, done = quickstart
    (cmd, p), = [(c, p) for c, p in _runs(done, "lbfl config") if "--toml" not in c]
    assert re.search(r"^\s*train\.lr\b", p.stdout, re.M), p.stdout[:500]
    assert any("--toml > exp.toml" in c for c, _ in done)
    assert load_config(str(cwd / "exp.toml"), []).to_dict() == load_config(None, []).to_dict()
