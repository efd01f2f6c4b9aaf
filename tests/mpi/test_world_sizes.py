"""The rank tests (tests/mpi/ranks) at 1, 2 and 4 ranks: one mpiexec launch of pytest per world size,
every rank running every test, and the count of passed tests checked so that a launch that collects
nothing, or fewer tests than it should, fails. By hand:

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from ..conftest import ROOT, _env, mpiexec

RANK_TESTS = 36     # test ids in tests/mpi/ranks, at every world size
GPU_TESTS = 2       # of them marked gpu (skipped without CUDA)
TWO_RANK_TESTS = 1  # of them skipped on one rank (dynamic batching needs two)
HANG_DUMP_S = 300   # a test running longer dumps every thread's traceback (pytest's faulthandler_timeout)


def launch(n: int, log_dir, *pytest_args: str, timeout: float) -> tuple[str, str]:
    """``mpiexec -n N pytest ... tests/mpi/ranks``; (stdout, stderr) of a launch that exited 0, else the test
    fails with both. On timeout the whole process group is ended, so no rank outlives the test."""
    cmd = [mpiexec(), "-n", str(n), "--oversubscribe", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-o", f"faulthandler_timeout={HANG_DUMP_S}", *pytest_args, "tests/mpi/ranks"]
    env = {**_env(), "LBFL_RANK_TESTS": "1", "LBFL_RANK_LOG_DIR": str(log_dir)}
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        pytest.fail(f"{' '.join(cmd)} ran over {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    if p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return out, err


def outcome_counts(stdout: str) -> dict[str, int]:
    """{"passed": 31, "skipped": 3, ...} from pytest's last summary line (warnings left out)."""
    lines = [ln for ln in stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)]
    assert lines, f"no pytest summary line in:\n{stdout}"
    return {k: int(v) for v, k in re.findall(r"(\d+) (\w+)", lines[-1]) if not k.startswith("warning")}


@pytest.mark.parametrize("n", [1, 2, 4])
def test_rank_tests_pass_on_every_rank(n, tmp_path):
    out, err = launch(n, tmp_path, timeout=600)
    skipped = (0 if torch.cuda.is_available() else GPU_TESTS) + (TWO_RANK_TESTS if n == 1 else 0)
    counts = outcome_counts(out)
    assert counts == {"passed": RANK_TESTS - skipped, **({"skipped": skipped} if skipped else {})}, out + err
    logs = sorted(f.name for f in tmp_path.iterdir())  # the report of every rank but rank 0
    assert logs == [f"rank{r}of{n}.log" for r in range(1, n)], logs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_rank_tests_pass_on_two_ranks(tmp_path):
    out, err = launch(2, tmp_path, "-m", "gpu", timeout=600)
    assert outcome_counts(out) == {"passed": GPU_TESTS, "deselected": RANK_TESTS - GPU_TESTS}, out + err
