"""benchmarks/gpu_protocol.sh (a protocol spec's grid on a GPU machine, packed for the trip back), in
its CPU dry run on a tiny spec: every part passes, the pack holds every run's summary, and those equal
the summaries of the same spec run one at a time by jobs/protocol/run.py (the reference); bad input
is one line and exit 2."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import ROOT, _env
from tests.integration._gpu_scripts import run_dry

SCRIPT = ROOT / "benchmarks" / "gpu_protocol.sh"


def _spec(tmp):
    base = tmp / "base.toml"
    base.write_text('[model]\nname = "mlp"\n[train]\nsteps = 3\neval_every = 0\nbatch_size = 8\nlr = 0.05\n'
                    '[data]\nval_fraction = 0.2\n')
    spec = tmp / "spec.toml"
    spec.write_text(f'[protocol]\nname = "tiny"\nconfig = "{base}"\nranks = 1\ntune_seeds = [0]\nseeds = [1, 2]\n'
                    'baselines = ["plain"]\n\n[arm.tuned]\ngrid = {key = "train.lr", multipliers = [1, 2]}\n\n'
                    '[arm.plain]\nset = ["train.momentum=0.5"]\n')
    return spec


def _env_for(tmp, **extra):
    env = _env()
    env.update(PYTHON=sys.executable, GPU_REPORT=str(tmp / "r.md"), TMPDIR=str(tmp), **extra)
    return env


def test_dry_run_packs_what_the_runner_gives_one_at_a_time(tmp_path):
    spec = _spec(tmp_path)
    p, wall = run_dry(SCRIPT, _env_for(tmp_path, PROTOCOL_SPEC=str(spec), PROTOCOL_RUNS=str(tmp_path / "gpu"),
                                       PROTOCOL_PARALLEL="2"), timeout=400)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "sum of part timeouts 478 s" in p.stderr  # 40 + 200 + 220 + 10 and 2 s of kill grace a part
    report = (tmp_path / "r.md").read_text()
    for title in ("Grid (--stage tune)", "Chosen settings on the paired seeds (--stage final)",
                  "Pack the finished runs"):
        assert f"| {title} | pass |" in report, report
    # the final part's limit: its own 220 s plus what the grid left of its 200 s
    tune_s = int(re.search(r"\| Grid \(--stage tune\) \| pass \| (\d+) \| 200 \|", report).group(1))
    final_row = r"\| Chosen settings on the paired seeds \(--stage final\) \| pass \| \d+ \| (\d+) \|"
    final_limit = int(re.search(final_row, report).group(1))
    assert final_limit == 220 + 200 - tune_s, report
    with tarfile.open(tmp_path / "r-runs.tgz") as t:
        names = [n for n in t.getnames() if n.endswith("/summary.json")]
        packed = {n: json.load(t.extractfile(n)) for n in names}
        assert not [n for n in t.getnames() if "/checkpoints" in n]
    assert len(packed) == 6  # 2 grid values + 2 arms x 2 seeds
    ref = tmp_path / "ref"
    env = {**_env(), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "jobs/protocol/run.py", str(spec), "--stage", "all", "--runs", str(ref)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=400)
    for n, s in packed.items():
        want = json.loads((ref / n).read_text())
        assert (s["outcome"], s["final_val_acc"], s["final_test_acc"]) == \
            (want["outcome"], want["final_val_acc"], want["final_test_acc"]), n


@pytest.mark.parametrize("extra,msg", [
    ({}, "PROTOCOL_SPEC is not set"),
    ({"PROTOCOL_SPEC": "nope.toml"}, "PROTOCOL_SPEC=nope.toml: no such file"),
    ({"PROTOCOL_SPEC": "jobs/protocol/gap.toml", "PROTOCOL_PARALLEL": "0"}, "PROTOCOL_PARALLEL=0: must be"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, msg):
    env = _env_for(tmp_path, **extra)
    env.pop("PROTOCOL_SPEC", None) if not extra else None
    p = subprocess.run(["bash", str(SCRIPT)], env={**env, "GPU_CHECK_DRY": "1"}, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1 and msg in lines[0], p.stderr
