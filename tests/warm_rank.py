"""A rank of ``mpiexec -n N python tests/warm_rank.py ARGS`` (tests/conftest.run_lbfl with n > 1).

This stub imports nothing heavy: it hands its environment (the launcher's PMIx and Open MPI variables
included), working directory, arguments and file descriptors 0, 1 and 2 to the warm server of the test
process (tests/warm.py, socket in ``LBFL_WARM_SOCK``), which forks ``python -m lbfl_mpi ARGS`` from an
interpreter that has torch imported already. The forked run calls MPI_Init itself and joins the job as
this rank. The stub forwards the signals a launcher sends (SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP,
SIGCONT) and exits as the run did (the same code, or the same signal); when the stub is killed, its
connection closes and the server kills the run, so no rank outlives the launcher.
"""
import json
import os
import signal
import socket
import struct
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGCONT)


def _recv8(sock: socket.socket) -> int:
    buf = b""
    while len(buf) < 8:
        chunk = sock.recv(8 - len(buf))
        if not chunk:
            raise SystemExit("warm_rank: the warm server closed the connection")
        buf += chunk
    return struct.unpack("!q", buf)[0]


def main() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["LBFL_WARM_SOCK"])
    req = {"args": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}
    pending: list[int] = []
    for sig in FORWARDED:  # until the run's pid is known, signals wait in `pending`
        signal.signal(sig, lambda s, _f: pending.append(s))
    socket.send_fds(sock, [json.dumps(req).encode()], [0, 1, 2])
    pid = _recv8(sock)

    def forward(s, _f):
        try:
            os.kill(pid, s)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    for s in pending:
        forward(s, None)
    status = _recv8(sock)
    if os.WIFSIGNALED(status):  # die of the same signal, as the launcher would see the run die
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), sig)
    raise SystemExit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
