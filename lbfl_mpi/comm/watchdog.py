"""The MPI watchdog: a rank that waits in one MPI collective longer than ``dist.timeout_s`` prints one
line and aborts the whole job (exit code 1).

MPI itself has no timeout: a rank that is stopped (SIGSTOP, a debugger, a frozen node) or dead without
its launcher noticing leaves every other rank blocked in its next collective forever. mpi4py releases
the GIL inside every blocking MPI call, so a daemon thread can watch the rank from outside the call:

- every watched call (:func:`watched`, the ``with`` form :meth:`Watchdog.watching`) stores
  ``(clock at entry, collective name)`` in :attr:`Watchdog.slot` before it starts and ``None`` after
  it ends: two attribute stores, no lock, no system call on the step path;
- the thread wakes every ``poll_s`` (a tenth of the timeout, at most 1 s) and adds the time since its
  previous wake-up to the wait of the slot it sees, if that is the one it saw before. Each wake-up
  counts at most two poll intervals, so time during which the whole process was stopped (a suspended
  job, ``scontrol suspend``, Ctrl-Z) is not counted as waiting: only a wait this rank was awake for;
- past ``timeout_s`` it writes one line on stderr naming the rank (rank, pid, host), the step and the
  collective, and calls ``MPI_Abort`` on the job's communicator. mpi4py initialises MPI with
  ``MPI_THREAD_MULTIPLE`` by default, so the call from a second thread is allowed while the first is
  blocked; the launcher then kills every rank, the stopped one included (SIGKILL needs no SIGCONT).

A rank that the watchdog aborts exits with code 1, the project's "anything else, the whole job aborts"
(cli.py). The torch.distributed planes (gloo, nccl) keep torch's own timeout for their collectives;
the control plane (object collectives, barriers, the stop agreement) is MPI, and watched, whatever
the data plane.
"""
from __future__ import annotations

import functools
import math
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager

EXIT_CODE = 1  # "anything else": the job aborts (DESIGN.md, cli.py)


def poll_interval(timeout_s: float) -> float:
    """Seconds between the thread's checks: a tenth of the timeout, between 10 ms and 1 s."""
    return min(1.0, max(0.01, timeout_s / 10.0))


class Watchdog:
    """One rank's watch over its MPI calls. ``abort(code)`` ends the job (it must not return);
    ``clock`` (seconds, monotonic) and ``stream`` (default: sys.stderr at the time of writing) are
    seams for tests. Not armed (no thread, nothing fires) until :meth:`arm`."""

    def __init__(self, abort, rank: int = 0, clock=time.monotonic, stream=None):
        self.slot: tuple[float, str] | None = None  # (clock at entry, what) while a watched call runs
        self.step: int | None = None  # the step in progress, for the message (set by the trainer)
        self.timeout_s = 0.0  # 0: not armed
        self.poll_s = 1.0
        self.fired: str | None = None  # the line written, once fired
        self._abort, self._clock, self._stream = abort, clock, stream
        self._who = f"rank {rank} (pid {os.getpid()} on {socket.gethostname()})"
        self._seen: tuple[float, str] | None = None
        self._waited = 0.0
        self._last = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------- the step path
    def enter(self, what: str) -> None:
        self.slot = (self._clock(), what)

    def leave(self) -> None:
        self.slot = None

    @contextmanager
    def watching(self, what: str):
        """``with watchdog.watching("stop agreement"): comm.Allgather(...)``."""
        self.slot = (self._clock(), what)
        try:
            yield
        finally:
            self.slot = None

    # ------------------------------------------------------------------------------ the watch
    def arm(self, timeout_s: float, thread: bool = True) -> None:
        """Watch with ``timeout_s`` from now on (> 0); ``thread``: start the polling thread (once)."""
        if not timeout_s > 0:
            raise ValueError(f"dist.timeout_s={timeout_s!r}: must be > 0")
        self.timeout_s = float(timeout_s)
        self.poll_s = poll_interval(self.timeout_s)
        self._last = self._clock()
        if thread and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="lbfl-mpi-watchdog", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        """Stop watching (and the thread, within one poll interval)."""
        self.timeout_s = 0.0
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.poll_s + 1)
        self._thread = None

    @property
    def armed(self) -> bool:
        return self.timeout_s > 0

    def poll(self) -> str | None:
        """One check (what the thread does every ``poll_s``); fires and returns the line when the
        current wait has passed the timeout, else None."""
        now = self._clock()
        gap = min(now - self._last, 2 * self.poll_s)  # a stopped process does not count as waiting
        self._last = now
        slot = self.slot
        if slot is None or not self.armed:
            self._seen, self._waited = None, 0.0
            return None
        if slot is not self._seen:  # a new call: its wait so far, but never more than this gap
            self._seen, self._waited = slot, min(now - slot[0], gap)
        else:
            self._waited += gap
        if self._waited <= self.timeout_s:
            return None
        return self.fire(slot[1], self._waited)

    def message(self, what: str, waited: float) -> str:
        at = "before the first step" if self.step is None else f"at step {self.step}"
        shown = math.ceil(waited * 10 - 1e-9) / 10  # rounded up: never "5.0 s, longer than 5"
        return (f"lbfl: error: {self._who} waited {shown:.1f} s in {what} {at}, longer than "
                f"dist.timeout_s={self.timeout_s:g}: another rank is stopped, dead or unreachable; "
                f"aborting the job (exit code {EXIT_CODE})")

    def fire(self, what: str, waited: float) -> str:
        line = self.message(what, waited)
        self.fired = line
        stream = self._stream or sys.stderr
        try:
            sys.stdout.flush()
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed stream must not keep the job from ending
            pass
        self._abort(EXIT_CODE)
        return line

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.poll() is not None:
                return


def watched(what: str):
    """Decorator for a method of an object with a ``watch`` (:class:`Watchdog`) attribute: the call is
    in the watchdog's slot as ``what`` while it runs."""

    def deco(fn):
        @functools.wraps(fn)
        def call(self, *args, **kwargs):
            dog = self.watch
            dog.slot = (dog._clock(), what)
            try:
                return fn(self, *args, **kwargs)
            finally:
                dog.slot = None

        return call

    return deco
