"""The MPI watchdog under mpiexec (lbfl_mpi/comm/watchdog.py): one rank stopped with SIGSTOP must end
the whole job within ``dist.timeout_s`` + 15 s, with exit code 1, one line from a waiting rank naming
itself (rank, pid, host), the step and the collective, no process left behind (the stopped one
included), and a run directory that ``lbfl analyze`` reads as an incomplete run.

BSP without stop agreement waits in the gradient allreduce (the data plane); FedAvg between averages
waits in the stop agreement (the control plane), here with rank 0 stopped and two ranks waiting.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lbfl_mpi.telemetry.h5log import open_rank_file, read_group

from ..conftest import Launched, rank_pids, run_lbfl, tiny_run_args

TIMEOUT = 5
# steps of a few ms that never end by themselves; rows flushed often so the killed run has some
OPTS = [f"dist.timeout_s={TIMEOUT}", "dist.backend=mpi", "train.steps=100000", "train.eval_every=0",
        "telemetry.flush_every=5", "data.name=synthetic",
        "data.synthetic_shape=[1, 8, 8]", "data.synthetic_train=1024", "data.synthetic_test=64"]
LINE = re.compile(r"^lbfl: error: rank (\d+) \(pid (\d+) on (\S+)\) waited (\d+\.\d) s in (.+) at step (\d+), "
                  rf"longer than dist\.timeout_s={TIMEOUT}: another rank is stopped, dead or unreachable; "
                  r"aborting the job \(exit code 1\)$")
CASES = {
    "bsp-allreduce": (2, 1, ["run.preempt_signals=[]", "train.nonfinite=ignore"], "allreduce"),
    "fedavg-agreement": (3, 0, ["sync.mode=fedavg", "sync.period=100000", "run.preempt_check_every=1"],
                         "allgather (stop agreement)"),
}


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_leftovers(pids: list[int]) -> list[int]:
    """SIGKILL whatever of ``pids`` still runs (after waiting up to 5 s for the launcher's own kill);
    returns the ones that were left."""
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _rows(run: Path, rank: int) -> int:
    """Rows flushed to a rank file so far (read while its writer runs, or after it was killed)."""
    with open_rank_file(run / f"rank{rank:04d}.h5") as f:
        return len(read_group(f, "steps").get("step", ()))


def _wait_for_rows(run: Path, n: int, rows: int, job: Launched, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    seen: dict[int, object] = {}
    while time.monotonic() < deadline:
        for r in range(n):
            try:
                seen[r] = _rows(run, r)
            except (OSError, KeyError) as e:  # not created yet, or caught mid-write
                seen[r] = f"{type(e).__name__}: {e}"
        if all(isinstance(v, int) and v >= rows for v in seen.values()):
            return
        if job.proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"fewer than {rows} rows in the rank files of {run} after {timeout} s (exit code "
                f"{job.proc.poll()}); last read per rank: {seen}\n" + "\n".join(job.lines[-20:]))


@pytest.mark.parametrize("case", CASES)
def test_a_stopped_rank_aborts_the_job_within_the_timeout(tmp_path, case):
    n, stopped, extra, collective = CASES[case]
    run = tmp_path / "run"
    job = Launched(tiny_run_args(run, *OPTS, *extra), n=n)
    pids: list[int] = []
    try:
        job.wait_for("starting at step 0")
        pids = rank_pids(job.proc.pid, n)
        _wait_for_rows(run, n, 10, job)
        if job.proc.poll() is not None:
            pytest.fail(f"job ended (exit code {job.proc.returncode}) before the SIGSTOP:\n{job.stderr}")
        os.kill(pids[stopped], signal.SIGSTOP)
        t0 = time.monotonic()
        try:  # not job.finish(): its read of stdout would block while a stopped rank holds the pipe
            rc = job.proc.wait(timeout=TIMEOUT + 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"job still running {TIMEOUT + 15} s after SIGSTOP of rank {stopped}:\n{job.stderr}")
        elapsed = time.monotonic() - t0
    finally:
        left = _kill_leftovers(pids + [job.proc.pid])
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait(timeout=10)
    job.finish(timeout=10)  # every line of stderr read
    assert not left, f"processes left behind after the abort: {left}"
    assert rc == 1, job.stderr
    assert TIMEOUT - 0.5 <= elapsed < TIMEOUT + 15, (elapsed, job.stderr)
    fired = [m for m in (LINE.match(line.lstrip("\0")) for line in job.lines) if m]  # Open MPI ends its banner with NUL
    assert fired and len({m.group(1) for m in fired}) == len(fired), job.stderr  # at most one line a rank
    for m in fired:  # each names itself, the collective and the step
        rank, pid, host, waited, what, step = m.groups()
        assert int(rank) != stopped and int(pid) == pids[int(rank)] and host == socket.gethostname(), m.group(0)
        assert TIMEOUT < float(waited) < TIMEOUT + 3 and what == collective, m.group(0)
        # flushed rows end at most with the step it waited in (an agreement after the step's row)
        assert _rows(run, int(rank)) >= 10 and int(step) >= 9, m.group(0)  # named a step after the rows seen
    print(f"{case}: job ended {elapsed:.1f} s after SIGSTOP (dist.timeout_s={TIMEOUT})")
    out = run_lbfl(["analyze", str(run)])
    assert "incomplete run" in out.stdout, out.stdout
