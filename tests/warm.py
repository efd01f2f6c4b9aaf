"""A warm start for the suite's one-process ``python -m lbfl_mpi ...`` runs: a fork server.

Every process the suite starts imports torch first, about 4-5 s of CPU on a 2-core machine, and the
suite starts a few hundred. ``conftest.run_lbfl(..., n=1)`` hands its run to a server that imported
torch, numpy and h5py once and forks a fresh child per run (as multiprocessing's forkserver does):
the child is a separate process with its own pid, exit status and file descriptors 0, 1 and 2 (the
test's temporary files, so C-level writes are captured too), its own environment and working
directory, and runs ``lbfl_mpi``'s ``__main__`` exactly as ``python -m lbfl_mpi`` does; nothing of
lbfl_mpi is imported before the fork. What differs from a fresh interpreter: torch, numpy and h5py are
already imported (the tests that check which modules a command imports run their own interpreters),
and environment variables that those three read at import time come from the server's start.

Runs under an MPI launcher (``run_lbfl(..., n>1)``) come here too: mpiexec starts the stub
tests/warm_rank.py as every rank, which sends its whole environment (the launcher's PMIx and Open MPI
variables) with its descriptors, so the forked run calls MPI_Init as that rank of that job. Runs a
test signals or inspects by pid (conftest.Launched, the rank-test launches of test_world_sizes)
always start fresh interpreters. ``LBFL_TEST_WARM=0`` turns the server off for the whole suite.

Protocol, one connection per run: the client sends a JSON request (args, env, cwd) with three file
descriptors; the server forks an intermediate process, which forks the run, sends its pid, waits for
it and sends the wait status, so the server itself stays single-threaded and never waits. When the
client's end closes first (a stub killed by its launcher, a client past its timeout), the intermediate
kills the run.
"""
from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run_child(req: dict) -> None:
    """In the forked child: become ``python -m lbfl_mpi ARGS`` and never return."""
    import runpy

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.path[:0] = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.argv = ["-m", *req["args"]]
    code = 0
    try:
        runpy.run_module("lbfl_mpi", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    raise SystemExit(code)  # a normal interpreter exit: atexit handlers and buffers run


def _wait_or_kill(run: int, conn: socket.socket) -> int:
    """The wait status of ``run``; SIGKILL it first when the client's end of ``conn`` closes (a client
    killed, or one that gave up on a timeout), so that no run outlives the process that asked for it."""
    pidfd = os.pidfd_open(run)
    while True:
        ready, _, _ = select.select([pidfd, conn], [], [])
        if pidfd in ready:
            break
        if not conn.recv(1, socket.MSG_PEEK):  # closed (any data would be a protocol error: ignored)
            os.kill(run, signal.SIGKILL)
            break
    os.close(pidfd)
    return os.waitpid(run, 0)[1]


def serve(path: str) -> None:
    import h5py  # noqa: F401 - the imports every run would pay for
    import numpy  # noqa: F401
    import torch  # noqa: F401

    parent = os.getppid()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    srv.settimeout(1.0)
    print("ready", flush=True)
    while os.getppid() == parent:  # ends with the test process that started it
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        req = json.loads(msg)
        conn.settimeout(None)
        if os.fork() == 0:  # the intermediate
            srv.close()
            run = os.fork()
            if run == 0:
                conn.close()
                for i, fd in enumerate(fds):
                    os.dup2(fd, i)
                    os.close(fd)
                _run_child(req)
            try:
                for fd in fds:
                    os.close(fd)
                conn.sendall(struct.pack("!q", run))
                conn.sendall(struct.pack("!q", _wait_or_kill(run, conn)))
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        conn.close()


class WarmServer:
    """The client side: one server per test process, started on first use."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.path = ""

    def _start(self, env: dict) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="lbfl-warm-"), "server.sock")
        code = "import sys; from tests.warm import serve; serve(sys.argv[1])"
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.path], env=env,
                                     cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the warm server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.path:
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)

    def socket_path(self, env: dict) -> str:
        """The server's socket path (the server started first when it is not running)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start(env)
        return self.path

    def run(self, args: list[str], env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        """``python -m lbfl_mpi ARGS`` in a forked child: a CompletedProcess as subprocess.run gives."""
        self.socket_path(env)
        with open(os.devnull) as null, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
            req = json.dumps({"args": args, "env": env, "cwd": str(cwd)}).encode()
            socket.send_fds(sock, [req], [null.fileno(), out.fileno(), err.fileno()])
            pid = struct.unpack("!q", _recv(sock, 8, timeout))[0]
            deadline = time.monotonic() + timeout
            try:
                status = struct.unpack("!q", _recv(sock, 8, max(0.1, deadline - time.monotonic())))[0]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(["lbfl_mpi", *args], timeout) from None
            finally:
                sock.close()
            code = os.waitstatus_to_exitcode(status)
            return subprocess.CompletedProcess([sys.executable, "-m", "lbfl_mpi", *args], code, _text(out), _text(err))


def _text(f) -> str:
    """As ``subprocess.run(text=True)`` decodes: UTF-8 here, universal newlines."""
    f.seek(0)
    return io.TextIOWrapper(f, encoding="utf-8", newline=None).read()


def _recv(sock: socket.socket, n: int, timeout: float) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            raise TimeoutError from None
        if not chunk:
            raise RuntimeError("the warm server closed the connection")
        buf += chunk
    return buf
