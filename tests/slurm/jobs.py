"""What the Slurm tests share: the command-line overrides a CPU partition needs, the environment a
job gets, a job output file read as it grows, and the bitwise comparison with an uninterrupted run."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "slurm" / "train.sbatch"
SWEEP = ROOT / "slurm" / "sweep_array.sbatch"
DEMO = ROOT / "jobs" / "demo.toml"
# the only header lines changed for this one-node CPU partition, given on the sbatch command line
CPU = ["--gpus-per-task=0", "--cpus-per-task=1"]
STOPPED = re.compile(r"SIGUSR1 received by rank \d+ (?:during step \d+|before the first step); "
                     r"every rank checkpointed step (\d+)")


def job_env(**extra: str) -> dict:
    """The submitting shell's additions: the venv that runs the tests, found by the template's VENV."""
    venv = Path(sys.executable).resolve().parent.parent
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin:/usr/sbin:/sbin"}
    if (venv / "bin" / "activate").exists():
        env["VENV"] = str(venv)
    return {**env, **extra}


class JobLog:
    """A job's output file (--open-mode=append keeps every restart), with the time each line was first
    seen, polled by the waits below."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lines: list[tuple[float, str]] = []
        self._pos = 0
        self._partial = ""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                data = fh.read()
        except FileNotFoundError:
            return
        self._pos += len(data)
        now = time.time()
        text = self._partial + data.decode(errors="replace")
        *complete, self._partial = text.split("\n")
        self.lines += [(now, ln) for ln in complete]

    @property
    def text(self) -> str:
        self.poll()
        return "\n".join(ln for _, ln in self.lines) + ("\n" + self._partial if self._partial else "")

    def seen(self, pattern: str, after: float = 0.0) -> float | None:
        """Time the first line containing ``pattern`` (seen after ``after``) appeared, or None."""
        self.poll()
        return next((t for t, ln in self.lines if t >= after and pattern in ln), None)

    def stops(self) -> list[int]:
        return [int(m.group(1)) for m in STOPPED.finditer(self.text)]


def wait_line(slurm, job: str, log: JobLog, pattern: str, timeout: float, after: float = 0.0) -> float:
    """Poll the output until a line with ``pattern`` appears; fail with the job's state and output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = log.seen(pattern, after)
        if t is not None:
            return t
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} within {timeout:.0f} s; job {slurm.job(job)}\n{log.text}")


def wait_requeued(slurm, job: str, log: JobLog, restarts: int, timeout: float = 120) -> None:
    """Until the job sits requeued (PENDING, held by its BeginTime) for the ``restarts``-th time, and
    its previous run has finished on the node."""
    deadline = time.monotonic() + timeout
    info = {}
    while time.monotonic() < deadline:
        log.poll()
        info = slurm.job(job)
        if info.get("JobState") == "PENDING" and int(info.get("Restarts", 0)) >= restarts:
            assert int(info["Restarts"]) == restarts, (info, log.text)
            if slurm.node_idle():  # the previous run has left the node
                # slurmd refuses a job credential created in the second its previous one was revoked
                # ("Job credential revoked"); Slurm's own requeue delay keeps clear of that
                time.sleep(2.0)
                return
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(0.2)
    raise AssertionError(f"job {job} was not requeued a {restarts}. time: JobState={info.get('JobState')} "
                         f"Restarts={info.get('Restarts')} ExitCode={info.get('ExitCode')}\n{log.text}")


def wait_done(slurm, job: str, log: JobLog, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    info = {}
    while time.monotonic() < deadline:
        log.poll()
        info = slurm.job(job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {job} still {info.get('JobState')} after {timeout:.0f} s\n{log.text}")


def time_column(name: str) -> bool:
    return name.startswith("t_") or name == "throughput"


def assert_same_run(ref: Path, run: Path, ranks: int, steps: int) -> list[str]:
    """model.pt bitwise, and every HDF5 column that is not a time, rank by rank; each step once.
    Returns the columns compared."""
    a, b = torch.load(ref / "model.pt"), torch.load(run / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"model.pt differs in {k}"
    compared = []
    for r in range(ranks):
        with h5py.File(ref / f"rank{r:04d}.h5") as fa, h5py.File(run / f"rank{r:04d}.h5") as fb:
            np.testing.assert_array_equal(fb["steps/step"][:], np.arange(steps))
            for group in ("steps", "eval"):
                assert set(fa[group]) == set(fb[group])
                for name in sorted(fa[group]):
                    if not time_column(name):
                        np.testing.assert_array_equal(fb[group][name][:], fa[group][name][:],
                                                      err_msg=f"rank {r} {group}/{name}")
                        compared.append(f"{group}/{name}")
    return compared


def slowed_step_s(ref: Path, ranks: int, factor: float) -> float:
    """Predicted seconds per step of ``ref``'s config under hetero.slowdown = ``factor`` on every rank:
    its median step, plus (factor - 1) x its median compute (the slowdown's sleep), slowest rank."""
    step, compute = [], []
    for r in range(ranks):
        with h5py.File(ref / f"rank{r:04d}.h5") as f:
            step.append(f["steps/t_step"][:])
            compute.append(f["steps/t_compute"][:])
    return float(np.median(np.max(step, axis=0)) + (factor - 1) * np.median(np.max(compute, axis=0)))


def factor_for(ref: Path, ranks: int, steps: int, seconds: float) -> float:
    """The hetero.slowdown factor that makes ``steps`` steps of ``ref``'s config last about ``seconds``."""
    per = slowed_step_s(ref, ranks, 1.0)
    compute = slowed_step_s(ref, ranks, 2.0) - per
    return float(min(1000.0, max(1.0, 1.0 + (seconds / steps - per) / max(compute, 1e-6))))
