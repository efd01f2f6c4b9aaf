"""The suite's fork server (tests/warm.py) against a fresh interpreter, the reference: the same run gives
the same files bit for bit, the same exit codes and the same lines (times aside)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import ROOT, _env, _warm, tiny_run_args

_TIMES = re.compile(r"\d+(\.\d+)?")


def _fresh(args, timeout=240):
    return subprocess.run([sys.executable, "-m", "lbfl_mpi", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _lines(text: str) -> list[str]:
    return [_TIMES.sub("N", ln) for ln in text.splitlines()]


def test_a_run_forked_warm_is_the_run_of_a_fresh_interpreter(tmp_path):
    warm = _warm().run(tiny_run_args(tmp_path / "warm"), _env(), ROOT, 240)
    fresh = _fresh(tiny_run_args(tmp_path / "fresh"))
    assert warm.returncode == fresh.returncode == 0, warm.stderr + fresh.stderr
    assert _lines(warm.stdout.replace("/warm", "/fresh")) == _lines(fresh.stdout)
    assert _lines(warm.stderr.replace("/warm", "/fresh")) == _lines(fresh.stderr)
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("warm", "fresh"))
    keys = ("final_test_acc", "best_test_acc", "steps")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    with h5py.File(tmp_path / "warm" / "rank0000.h5") as a, h5py.File(tmp_path / "fresh" / "rank0000.h5") as b:
        for col in ("steps/loss", "steps/batch_size", "eval/test_loss", "eval/test_acc"):
            np.testing.assert_array_equal(a[col][:], b[col][:])
    assert (tmp_path / "warm" / "model.pt").read_bytes() != b""


@pytest.mark.parametrize("args", [["train", "--set", "train.lr=abc"], ["analyze", "/nonexistent/run"],
                                  ["config", "--toml"]])
def test_exit_codes_and_output_match_a_fresh_interpreter(args):
    warm, fresh = _warm().run(args, _env(), ROOT, 120), _fresh(args)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


def test_a_run_past_its_timeout_is_killed(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        _warm().run(["train", "--set", "train.steps=100000", "--set", f"run.out_dir={tmp_path}",
                     "--set", "run.overwrite=true"], _env(), ROOT, 3)


# ------------------------------------------------------------------ ranks under mpiexec (tests/warm_rank.py)
def _mpi(args, warm: bool, timeout=240):
    from tests.conftest import mpiexec

    env = {**_env(), **({"LBFL_WARM_SOCK": _warm().socket_path(_env())} if warm else {})}
    exe = [str(ROOT / "tests" / "warm_rank.py")] if warm else ["-m", "lbfl_mpi"]
    return subprocess.run([mpiexec(), "-n", "2", "--oversubscribe", sys.executable, *exe, *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_warm_ranks_under_mpiexec_are_the_fresh_ranks(tmp_path):
    """Two ranks forked warm join one MPI job (the allreduce agrees) and write the files of two
    fresh ranks bit for bit, with the same lines on stderr."""
    warm = _mpi(tiny_run_args(tmp_path / "warm", "train.momentum=0.9"), warm=True)
    fresh = _mpi(tiny_run_args(tmp_path / "fresh", "train.momentum=0.9"), warm=False)
    assert warm.returncode == fresh.returncode == 0, warm.stderr + fresh.stderr
    assert _lines(warm.stderr.replace("/warm", "/fresh")) == _lines(fresh.stderr)
    for r in range(2):
        with h5py.File(tmp_path / "warm" / f"rank{r:04d}.h5") as a, \
                h5py.File(tmp_path / "fresh" / f"rank{r:04d}.h5") as b:
            assert a.attrs["world_size"] == 2
            for col in ("steps/loss", "steps/batch_size", "steps/grad_norm_sq", "eval/test_acc"):
                np.testing.assert_array_equal(a[col][:], b[col][:])
    assert (tmp_path / "warm" / "model.pt").read_bytes() == (tmp_path / "fresh" / "model.pt").read_bytes()


def test_warm_ranks_exit_as_fresh_ranks_on_bad_input(tmp_path):
    args = ["train", "--set", f"run.out_dir={tmp_path}/x", "--set", "train.batch_size=-3"]
    warm, fresh = _mpi(args, warm=True), _mpi(args, warm=False)
    assert warm.returncode == fresh.returncode == 2, warm.stderr + fresh.stderr
    assert [ln for ln in warm.stderr.splitlines() if ln.startswith("lbfl:")] == \
        [ln for ln in fresh.stderr.splitlines() if ln.startswith("lbfl:")]


def test_a_killed_stub_takes_its_warm_run_down(tmp_path):
    """SIGKILL to the stub (as a launcher ends a rank) closes its connection: the server kills the
    forked run, so no rank outlives its launcher."""
    import os
    import signal
    import time

    from tests.conftest import descendants

    env = {**_env(), "LBFL_WARM_SOCK": _warm().socket_path(_env())}
    stub = subprocess.Popen([sys.executable, str(ROOT / "tests" / "warm_rank.py"), "train", "--set",
                             "train.steps=100000", "--set", f"run.out_dir={tmp_path}"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = _warm().proc.pid
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "rank0000.h5").exists():
        time.sleep(0.05)
    runs = descendants(server)  # the intermediate and the run
    assert len(runs) == 2, runs
    os.kill(stub.pid, signal.SIGKILL)
    stub.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in runs):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in runs)
