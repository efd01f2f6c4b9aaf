"""benchmarks/gpu_fidelity.sh (the Fig. 7/8 grid of jobs/scaling/resnet18_gpu at GPU scale) on CPU.

The dry run (GPU_CHECK_DRY=1) runs all ten configs with tiny sizes. Its report is checked against the
run directories it claims to describe: every final accuracy in its table is that run's summary.json
``final_test_acc``, and every held / not-held verdict is recomputed here from the summaries (the
paper's orderings: some X > 1 at threshold 0.5 above X = 1; the scaled large batch above the small
batch; threshold 0.8 above 0.5 at X = 8 and 16 (Fig. 8); the best transform above the constant-lr
controls). The runner skips finished runs, so a second invocation continues a grid, and it takes its
runs down with it when signalled.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, _env, descendants
from tests.integration._gpu_scripts import run_dry, script_limits

SCRIPT = ROOT / "benchmarks" / "gpu_fidelity.sh"
RUNNER = ROOT / "benchmarks" / "gpu_fidelity_runs.py"
JOBS = ROOT / "jobs" / "scaling" / "resnet18_gpu"
NAMES = sorted(p.stem for p in JOBS.glob("*.toml"))
PARTS = ["machine", "wave1", "wave2", "analysis"]


def _env_for(tmp: Path, **extra) -> dict:
    env = _env()
    env.update(PYTHON=sys.executable, GPU_REPORT=str(tmp / "r.md"), FIDELITY_RUNS=str(tmp / "runs"),
               TMPDIR=str(tmp), **extra)
    return env


def _bench(module: str):
    """A module of benchmarks/ (not a package), imported by name."""
    import importlib

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(module)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_fidelity_dry")
    p, wall = run_dry(SCRIPT, _env_for(tmp), timeout=420)
    return p, wall, tmp


def _summaries(runs: Path) -> dict[str, dict]:
    return {n: json.loads((runs / n / "summary.json").read_text()) for n in NAMES}


def _expected_verdicts(runs: Path) -> dict[str, str]:
    """The orderings recomputed from summary.json and config.toml of each run (a diverged run ranks
    below all; comparisons strict)."""
    acc, cfg = {}, {}
    for n in NAMES:
        s = json.loads((runs / n / "summary.json").read_text())
        acc[n] = -math.inf if s.get("outcome") == "nonfinite_stop" else s["final_test_acc"]
        cfg[n] = tomllib.loads((runs / n / "config.toml").read_text())
    for n in NAMES:  # the names say what the configs are
        m = re.fullmatch(r"large_t(\d)(\d)_x(\d+)", n)
        sc = cfg[n]["scaling"]
        if m:
            assert sc["method"] == "step" and sc["factor"] == int(m.group(3))
            assert sc["threshold"] == int(m.group(1)) + int(m.group(2)) / 10 and sc["polarity"] == "experiments"
        else:
            assert sc["method"] == "none"
    scaled = [n for n in NAMES if n.startswith("large_t")]
    t05 = [n for n in scaled if n.startswith("large_t05")]
    best = max(acc[n] for n in scaled)

    def v(ok: bool) -> str:
        return "held" if ok else "not held"

    return {"1": v(max(acc[n] for n in t05) > acc["large_x1"]), "2": v(best > acc["small_b32"]),
            "3a": v(acc["large_t08_x08"] > acc["large_t05_x08"]), "3b": v(acc["large_t08_x16"] > acc["large_t05_x16"]),
            "4": v(best > max(acc["large_lr_x02"], acc["large_lr_x04"]))}


def test_grid_is_the_ten_runs_at_equal_iterations():
    assert NAMES == sorted(["large_x1", "large_t05_x02", "large_t05_x04", "large_t05_x08", "large_t05_x16",
                            "large_t08_x08", "large_t08_x16", "small_b32", "large_lr_x02", "large_lr_x04"])
    cfgs = {n: tomllib.loads((JOBS / f"{n}.toml").read_text()) for n in NAMES}
    assert {c["train"]["steps"] for c in cfgs.values()} == {600}
    assert all(c["model"] == {"name": "resnet18", "norm": "batch"} and c["run"]["world_size"] == 1
               and "root" not in c["data"] and c["train"]["batch_size"] == (32 if n == "small_b32" else 1024)
               for n, c in cfgs.items())
    assert {n: c["train"]["lr"] for n, c in cfgs.items() if c["train"]["lr"] != 0.05} == \
        {"large_lr_x02": 0.1, "large_lr_x04": 0.2}


def test_dry_run_passes_every_part(dry):
    p, wall, tmp = dry
    assert p.returncode == 0, p.stderr[-4000:]
    report = (tmp / "r.md").read_text()
    parts = re.findall(r"^\| (\d+) \| (.+?) \| (.+?) \| (.+?) \| (\d+) \|$", report, flags=re.M)
    assert len(parts) == len(PARTS) and all(r == "pass" for _, _, r, _, _ in parts), parts
    assert "**Dry run**" in report and "Every part that ran passed." in report
    assert wall < 300, f"dry run took {wall:.0f} s"


def test_printed_sum_of_timeouts_is_the_scripts_and_at_most_480(dry):
    p, _, _ = dry
    limits = script_limits(SCRIPT)
    assert list(limits) == PARTS
    m = re.search(r"sum of part timeouts (\d+) s", p.stderr)
    assert m, p.stderr[:2000]
    assert int(m.group(1)) == sum(v + 2 for v in limits.values()) <= 480


def test_table_accuracies_are_the_summaries(dry):
    _, _, tmp = dry
    report = (tmp / "r.md").read_text()
    report = report[report.index("### Final test accuracy"):report.index("### Which of the paper's orderings")]
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.-]+) \| ([\d.]+) \| (\d+) "
                      r"\| ([\d.]+)[^|]* \| ([\d.]+) \| ([\d.]+) \|$", report, flags=re.M)
    assert sorted(r[0] for r in rows) == NAMES, rows
    summaries = _summaries(tmp / "runs")
    for name, _x, _t, _lr, b, final, best, _ in rows:
        s = summaries[name]
        assert float(final) == pytest.approx(s["final_test_acc"], abs=5e-5), name
        assert float(best) == pytest.approx(s["best_test_acc"], abs=5e-5), name
        assert int(b) == s["global_batch"]
    assert int(dict((r[0], r[4]) for r in rows)["small_b32"]) == 4  # the dry run's small batch


def test_verdicts_agree_with_the_summaries(dry):
    _, _, tmp = dry
    report = (tmp / "r.md").read_text()
    assert report.count("### Which of the paper's orderings held") == 1
    found = dict(re.findall(r"^- \((\w+)\) .*?: \*\*(held|not held|not testable[^*]*)\*\*", report, flags=re.M))
    assert found == _expected_verdicts(tmp / "runs")
    rows = [json.loads(ln) for ln in (tmp / "r.jsonl").read_text().splitlines()]
    assert {r["ordering"]: r["verdict"] for r in rows if "ordering" in r} == found


def test_rows_are_json_one_per_run_and_charts_at_most_six(dry):
    _, _, tmp = dry
    rows = [json.loads(ln) for ln in (tmp / "r.jsonl").read_text().splitlines()]
    runs = [r for r in rows if "run" in r]
    assert sorted(r["run"] for r in runs) == NAMES
    assert all(r["ok"] and r["exit"] == 0 and not r["skipped"] for r in runs)
    assert [r["part"] for r in rows if "result" in r] == PARTS
    pngs = sorted(p.name for p in (tmp / "r").glob("*.png"))
    assert 1 <= len(pngs) <= 6 and "convergence.png" in pngs and "grad_change.png" in pngs
    report = (tmp / "r.md").read_text()
    assert all(f"(r/{n})" in report for n in pngs)


def test_a_second_invocation_skips_the_finished_runs(dry):
    """The runner, given wave 1's arguments from the dry run's report, finds every run finished."""
    _, _, tmp = dry
    cmd = re.search(r"Command: `(\S+ benchmarks/gpu_fidelity_runs\.py [^`]*--part wave1[^`]*)`",
                    (tmp / "r.md").read_text()).group(1).split()
    rows = tmp / "again.jsonl"
    cmd = [str(rows) if a == str(tmp / "r.jsonl") else a for a in cmd[1:]]
    # the script's temporary folder (where --markdown went) is removed when it ends
    cmd[cmd.index("--markdown") + 1] = str(tmp / "again.md")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert time.monotonic() - t0 < 20 and p.stdout.count("skipped (finished before)") == 5, p.stdout
    again = [json.loads(ln) for ln in rows.read_text().splitlines()]
    assert len(again) == 5 and all(r["skipped"] and r["ok"] for r in again)


def test_a_changed_config_is_not_taken_for_a_finished_run(dry):
    _, _, tmp = dry
    finished_summary = _bench("gpu_fidelity_runs").finished_summary
    run = tmp / "runs" / "large_x1"
    cfg = tomllib.loads((run / "config.toml").read_text())
    assert finished_summary(run, cfg) is not None
    cfg["train"]["steps"] += 1
    assert finished_summary(run, cfg) is None


def _tiny_config(tmp: Path, steps: int) -> Path:
    f = tmp / "tiny.toml"
    f.write_text(f'[run]\nout_dir = "runs/tiny"\n[data]\nname = "digits"\n[model]\nname = "cnn"\n'
                 f"[train]\nsteps = {steps}\nbatch_size = 8\neval_every = 0\n")
    return f


def test_runner_takes_its_runs_down_on_sigterm(tmp_path):
    rows = tmp_path / "rows.jsonl"
    proc = subprocess.Popen([sys.executable, str(RUNNER), "--out", str(tmp_path / "runs"), "--data-root", "",
                             "--json", str(rows), str(_tiny_config(tmp_path, 10**6))], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "runs" / "tiny.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "starting at step" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    children = descendants(proc.pid)
    assert children, "the run did not start"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "tiny: killed" in out
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    row = json.loads(rows.read_text())
    assert row["run"] == "tiny" and row["exit"] == "killed" and not row["ok"]


def _run(name: str, method="none", x=1.0, t=0.5, lr=0.05, b=1024, acc=None, outcome="completed"):
    Run = _bench("gpu_fidelity_report").Run
    cfg = {"scaling": {"method": method, "factor": x, "threshold": t}, "train": {"lr": lr, "batch_size": b},
           "run": {"world_size": 1}}
    summary = None if acc is None else {"final_test_acc": acc, "outcome": outcome}
    return Run(name, cfg, summary)


def test_orderings_on_made_up_accuracies():
    """Roles come from the configs; a diverged run ranks last; a missing one makes a claim untestable."""
    orderings = _bench("gpu_fidelity_report").orderings
    runs = [_run("base", acc=0.80), _run("small", b=32, acc=0.85), _run("c2", lr=0.1, acc=0.82),
            _run("c4", lr=0.2),  # missing
            _run("a", "step", 2.0, 0.5, acc=0.805), _run("b", "step", 8.0, 0.5),  # b missing
            _run("c", "step", 8.0, 0.8, acc=0.84), _run("d", "step", 16.0, 0.5, acc=0.9, outcome="nonfinite_stop"),
            _run("e", "step", 16.0, 0.8, acc=0.10)]
    got = {k: v for k, v in orderings(runs)}
    assert got["1"]["verdict"] == "held" and got["1"]["better"] == "a" and got["1"]["missing"] == ["b"]
    assert got["2"]["verdict"] == "not held" and got["2"]["better"] == "c"  # 0.84 < 0.85; d diverged
    assert got["3a"]["verdict"] == "not testable (run missing)"
    assert got["3b"]["verdict"] == "held" and got["3b"]["diff"] is None  # 0.10 against a diverged run
    assert got["4"]["verdict"] == "held" and got["4"]["worse"] == "c2" and got["4"]["missing"] == ["b", "c4"]
    assert "noise" in got["1"]["detail"] and "noise" not in got["4"]["detail"]  # +0.5 and +2 points at n = 1


@pytest.mark.parametrize("env, needle", [
    ({"GPU_CHECK_DRY": "1", "FIDELITY_STEPS": "many"}, "FIDELITY_STEPS=many: must be a positive integer"),
    ({"GPU_CHECK_DRY": "1", "FIDELITY_PARALLEL": "0"}, "FIDELITY_PARALLEL=0: must be a positive integer"),
    ({"GPU_CHECK_DRY": "maybe"}, "GPU_CHECK_DRY=maybe: must be 0 or 1"),
    ({"GPU_CHECK_DRY": "0", "FMNIST_ROOT": "/nonexistent/fm"}, "data root /nonexistent/fm has no train-images")])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, env, needle):
    p = subprocess.run(["bash", str(SCRIPT)], env={**_env_for(tmp_path), **env}, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and needle in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.md").exists()
