"""A private single-node Slurm for the tests: munged, slurmctld and slurmd started from one temporary
directory and stopped again.

Everything lives under that directory: slurm.conf, the munge key and socket, state, spool, logs and
pid files. The daemons listen on free ports chosen at start, so a system Slurm on the same machine is
never touched; clients find the private controller through ``SLURM_CONF`` in :attr:`PrivateSlurm.env`.

Settings that keep the tests fast and exact: ``ProctrackType=proctrack/linuxproc`` and
``TaskPlugin=task/none`` (no cgroups needed), ``MpiDefault=none`` (as on a site without a default MPI
plugin, so the templates' ``--mpi=pmix`` matters), ``JobRequeue=1``, ``OverTimeLimit=0``, a short
``KillWait``, and 8 CPUs declared (``SlurmdParameters=config_overrides``) so that array elements can
run side by side on a small machine. ``SlurmctldDebug=debug2`` logs every time-limit check, which
:meth:`PrivateSlurm.wait_for_check_phase` reads: slurmctld checks time limits (and sends ``--signal``
warnings) every 30 s, from its own start.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")
PMIX_LIB = Path("/usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so")  # Debian's mpi_pmix plugin dlopens it
PACKAGES = ("slurm-wlm", "munge", "libpmix2", "libpmix-dev")       # -dev: the unversioned libpmix.so
CHECK_PERIOD = 30.0  # slurmctld's PERIODIC_TIMEOUT
CHECK_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\] debug2: Testing job time limits")


def missing() -> list[str]:
    """The commands and files a private Slurm needs that this machine lacks."""
    out = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    return out + ([str(PMIX_LIB)] if not PMIX_LIB.exists() else [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmError(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _end(pids: list[int], sig: int, wait: float) -> None:
    """Send ``sig`` to each process, wait up to ``wait`` seconds for all to end, then SIGKILL the rest."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class PrivateSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        for d in ("state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "run" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for k in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if k != "SLURM_CONF":  # the test process may itself run inside a Slurm job
                del self.env[k]
        self.version = ""

    # ------------------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 60) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port, slurmd_port = _free_port(), _free_port()
        r = self.root
        self.conf.write_text(f"""\
ClusterName=lbfltest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
PlugStackConfig={r}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobRequeue=1
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MessageTimeout=10
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MinJobAge=600
SlurmctldDebug=debug2
SlurmdDebug=info
NodeName={self.host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        (r / "plugstack.conf").write_text("")
        self._daemon([_which("munged"), f"--socket={self.socket}", f"--key-file={key}", "--force",
                      f"--pid-file={r}/run/munged.pid", f"--log-file={r}/log/munged.log",
                      f"--seed-file={r}/run/munged.seed"])
        self._daemon([_which("slurmctld"), "-i", "-f", str(self.conf)])
        self.ctld_started = time.time()  # its time-limit checks run every 30 s from here
        self._daemon([_which("slurmd"), "-f", str(self.conf)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.cmd("sinfo", "-h", "-o", "%T", check=False)
            if p.returncode == 0 and p.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            raise SlurmError(f"the node did not become idle within {timeout:.0f} s: {self.log_tail()}")
        self.version = self.cmd("sinfo", "--version").stdout.strip()

    def _daemon(self, argv: list[str]) -> None:
        p = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            last = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
            raise SlurmError(f"{Path(argv[0]).name} exited {p.returncode}: {last[-300:]}")

    def cancel_all(self, timeout: float = 15) -> None:
        """Cancel every job and wait until the queue is empty and the node idle."""
        self.cmd("scancel", "--user=root", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.cmd("squeue", "-h", check=False).stdout.strip() and self.node_idle():
                return
            time.sleep(0.25)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, and end any job process they leave behind."""
        if self.conf.exists():
            self.cancel_all()
        pids = []
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                pids.append(int((self.root / "run" / f"{name}.pid").read_text().strip()))
            except (OSError, ValueError):
                continue
        _end(pids, signal.SIGTERM, 10)
        _end(self._own_processes(), signal.SIGKILL, 5)  # slurmstepd and its tasks outlive slurmd

    def _own_processes(self) -> list[int]:
        """Processes started under this Slurm: their environment names this slurm.conf."""
        marker = f"SLURM_CONF={self.conf}".encode()
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        out.append(int(entry.name))
                except OSError:
                    continue
        return out

    # ----------------------------------------------------------------------------------- clients
    def cmd(self, *argv: str, check: bool = True, env: dict | None = None, cwd=None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run([_which(argv[0]), *argv[1:]], env={**self.env, **(env or {})}, cwd=cwd,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited {p.returncode}: {' | '.join(p.stderr.strip().splitlines())}")
        return p

    def sbatch(self, *argv: str, env: dict | None = None, cwd=None) -> str:
        """Submit; returns the job id."""
        out = self.cmd("sbatch", "--parsable", *argv, env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (the first record: the job, or the first array element)."""
        text = self.cmd("scontrol", "-o", "show", "job", job).stdout.splitlines()[0]
        return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)

    def wait(self, job: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        """Poll until the job is in one of ``states`` (JobState, e.g. PENDING, COMPLETED)."""
        deadline = time.monotonic() + timeout
        info = {}
        while time.monotonic() < deadline:
            info = self.job(job)
            if info.get("JobState") in states:
                return info
            time.sleep(0.25)
        raise SlurmError(f"job {job} not in {states} within {timeout:.0f} s: JobState={info.get('JobState')} "
                         f"Reason={info.get('Reason')} Restarts={info.get('Restarts')}")

    def node_idle(self) -> bool:
        """No job runs or completes on the node."""
        return self.cmd("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle"

    def release(self, job: str) -> None:
        """Start a requeued job now instead of after Slurm's requeue delay (its BeginTime)."""
        self.cmd("scontrol", "update", f"jobid={job}", "StartTime=now")

    def last_check(self) -> float:
        """Epoch time of slurmctld's latest time-limit check (from its debug2 log; its start before the
        first)."""
        last = None
        for line in (self.root / "log" / "slurmctld.log").read_text(errors="replace").splitlines():
            m = CHECK_LINE.match(line)
            if m:
                last = m.group(1)
        if last is None:
            return self.ctld_started
        return datetime.datetime.fromisoformat(last).timestamp()

    def wait_for_check_phase(self, lo: float, hi: float) -> float:
        """Sleep until the next time-limit check is between ``lo`` and ``hi`` seconds away (at once when
        it already is, else until it is ``hi`` away); returns that check's expected epoch time."""
        hi = max(hi, lo)
        nxt = self.last_check() + CHECK_PERIOD
        while nxt - time.time() < lo:
            nxt += CHECK_PERIOD
        time.sleep(max(0.0, nxt - time.time() - hi))
        return nxt

    def log_tail(self, lines: int = 3) -> str:
        out = []
        for name in ("munged", "slurmctld", "slurmd"):
            p = self.root / "log" / f"{name}.log"
            if p.exists():
                tail = [ln for ln in p.read_text(errors="replace").splitlines() if "debug" not in ln][-lines:]
                out.append(f"{name}: " + " | ".join(tail))
        return "; ".join(out)
