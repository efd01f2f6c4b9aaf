"""The CLI as a user (or a hostile neighbour on a shared cluster) meets it: non-regular files at names
lbfl reads, a symlinked checkpoints/ of another run, the umask, a full disk, a late signal, bad
environment variables, resuming with fewer steps, a run name in any alphabet, the grid script's
overrides. Each test states what it guards against; references are the files as they were, the exit
code the design gives (0 done, 1 other, 2 bad input, 4 non-finite) and one `lbfl: error:` line.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from lbfl_mpi.analysis import analyze_main

from ..conftest import ROOT, _env, run_lbfl, tiny_run_args
from ..unit._fake_runs import fake_run
from .test_run_grid import grid  # noqa: F401 - the grid script fixture, with stub launcher and lbfl


def _errors(p):
    return [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]


def _one_error(p, code, *want):
    errs = _errors(p)
    assert p.returncode == code and len(errs) == 1 and all(w in errs[0] for w in want), p.stderr
    assert "Traceback" not in p.stderr, p.stderr


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 8-step run with checkpoints at steps 4 and 8."""
    run = tmp_path_factory.mktemp("base") / "run"
    run_lbfl(tiny_run_args(run, "train.steps=8", "run.checkpoint_every=4"))
    return run


def test_fifos_in_a_run_directory_are_one_line_never_a_hang(tmp_path):
    """resume=auto (which the sbatch template always adds) read config.toml and meta.json, and analyze
    read summary.json: a FIFO at any of them blocked for ever."""
    run = tmp_path / "run"
    fake_run(run, final=0.5, world_size=1, summary=False)
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    os.mkfifo(run / "checkpoints" / "step_00000004" / "meta.json")
    p = run_lbfl(tiny_run_args(run, "run.resume=auto"), check=False, timeout=60)
    _one_error(p, 2, "no checkpoint to resume")
    (run / "config.toml").unlink()
    os.mkfifo(run / "config.toml")
    p = run_lbfl(tiny_run_args(run, "run.resume=auto"), check=False, timeout=60)
    _one_error(p, 2, "config.toml is a FIFO (named pipe), not a file")
    os.mkfifo(run / "summary.json")
    p = run_lbfl(["analyze", str(run)], check=False, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "is a FIFO (named pipe)" in p.stderr, p.stderr


def test_a_symlinked_checkpoints_dir_is_refused_and_the_other_run_keeps_its_checkpoints(tmp_path, base):
    other = tmp_path / "other"
    shutil.copytree(base, other, symlinks=True)
    before = sorted(p.name for p in (other / "checkpoints").iterdir())
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(other / "checkpoints")
    p = run_lbfl(tiny_run_args(run, "run.resume=auto", "train.steps=16", "run.checkpoint_every=2"), check=False)
    _one_error(p, 2, "checkpoints is a symbolic link, not a directory")
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == before == \
        ["latest.json", "step_00000004", "step_00000008"]
    assert sorted(x.name for x in run.iterdir()) == ["checkpoints"]


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path, base):
    run = tmp_path / "run"
    shutil.copytree(base, run, symlinks=True)
    p = run_lbfl(tiny_run_args(run, "run.resume=auto", "train.steps=5"), check=False)
    _one_error(p, 2, "train.steps=5 is below the checkpoint's step 8")
    assert "resuming at step 8 of 5" not in p.stderr


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_every_output_file_respects_the_umask(tmp_path, mask):
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "lbfl_mpi", *tiny_run_args(run, "train.steps=4",
                        "run.checkpoint_every=2")], env=_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=240, preexec_fn=lambda: os.umask(mask))
    assert p.returncode == 0, p.stderr
    files = [f for f in run.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"config.toml", "summary.json", "model.pt", "rank0000.h5", ".lbfl.lock",
                                       "latest.json", "meta.json", "rank0000.pt"}
    for f in files:  # before: mkstemp's 0600 on everything written atomically
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    for d in [run, *(d for d in run.rglob("*") if d.is_dir())]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask, d


def test_a_full_disk_is_one_line_and_exit_1(tmp_path):
    """Before: about 30 h5py tracebacks, then SIGSEGV. Needs root to mount a 1.5 MB tmpfs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        p = run_lbfl(tiny_run_args(disk / "run", "train.steps=300", "run.checkpoint_every=1",
                                   "telemetry.flush_every=1"), check=False)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    _one_error(p, 1, "No space left on device", "rank0000.h5")
    assert "Segmentation fault" not in p.stderr


SIGNAL_SCRIPT = """\
import os, signal, sys
from lbfl_mpi.cli import main

steps = int(sys.argv[1])

def batches(step, client):
    if step == steps - 1:  # the very last step
        os.kill(os.getpid(), signal.SIGUSR1)
    return client.loader.next_batch()

code = main(sys.argv[2:], batches=batches)
os.kill(os.getpid(), signal.SIGUSR1)  # and one after the run is complete, before the process ends
sys.exit(code)
"""


@pytest.mark.parametrize("mode", ["bsp", "fedavg"])
def test_a_signal_in_the_last_step_or_after_it_exits_0(tmp_path, mode):
    """Before: "completed", then death by SIGUSR1 (exit 138 under a launcher); FedAvg with
    sync.period > train.steps never agreed on the signal and said nothing."""
    script = tmp_path / "late_signal.py"
    script.write_text(SIGNAL_SCRIPT)
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, str(script), "6", *tiny_run_args(run, "train.steps=6", f"sync.mode={mode}",
                        "sync.period=10")], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert "SIGUSR1 received by rank 0 during step 5; the run reached train.steps=6" in p.stderr
    assert json.loads((run / "summary.json").read_text())["outcome"] == "completed"


@pytest.mark.parametrize("name,value,want", [("MASTER_PORT", "abc", "must be a TCP port number"),
                                             ("LBFL_ALLREDUCE_CHUNK_MB", "0.000001", "must be 0 (no slicing)")])
def test_bad_environment_variables_are_one_line_before_anything_is_written(tmp_path, name, value, want):
    p = subprocess.run([sys.executable, "-m", "lbfl_mpi", *tiny_run_args(tmp_path / "run")],
                       env={**_env(), name: value}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    _one_error(p, 2, f"{name}={value!r}: {want}")
    assert not (tmp_path / "run").exists()


def test_a_run_named_in_any_alphabet_can_be_analysed_and_overwritten(tmp_path, capsys):
    """Before: json.dumps wrote the emoji as a surrogate pair, which no TOML reader accepts."""
    run = tmp_path / "runs 😀 ü"
    args = tiny_run_args(run, "train.steps=2", 'run.name="👍 ok\\tnow"')
    run_lbfl(args)
    assert analyze_main([str(run)]) == 0
    assert "== 👍 ok\\tnow" in capsys.readouterr().out  # the tab printed as an escape
    p = run_lbfl([*args, "--set", "run.overwrite=true"])
    assert "starting at step 0" in p.stderr


@pytest.mark.parametrize("extra", [["--set", " run.out_dir=elsewhere"], ["--set", "run.out_dir =elsewhere"],
                                   ["--set=run.out_dir=elsewhere"], ["--set", "run. out_dir=x"],
                                   ["--set", "bad key=1"], ["run.out_dir=x"]])
def test_the_grid_refuses_every_spelling_of_an_out_dir_override(grid, extra):  # noqa: F811
    run, cfgs, _, runs, _ = grid
    p, calls = run(cfgs, *extra)
    assert p.returncode == 2 and calls == [], p.stderr
    assert ("cannot be overridden" in p.stderr) == extra[-1].endswith("=elsewhere"), p.stderr
