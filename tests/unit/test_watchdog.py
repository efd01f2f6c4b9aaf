"""The MPI watchdog's logic (lbfl_mpi/comm/watchdog.py) with a fake clock and a fake abort: when it
fires, what it counts as waiting, the exact line, and that every watched call fills and clears the slot."""
from __future__ import annotations

import io
import os
import socket
import threading

import numpy as np
import pytest
import torch

from lbfl_mpi.comm.watchdog import EXIT_CODE, Watchdog, poll_interval, watched


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _dog(timeout: float = 5.0, rank: int = 1):
    clock, aborts, out = Clock(), [], io.StringIO()
    dog = Watchdog(aborts.append, rank=rank, clock=clock, stream=out)
    dog.arm(timeout, thread=False)
    return dog, clock, aborts, out


def _advance(dog, clock, seconds: float, every: float):
    """Poll every ``every`` seconds for ``seconds``; the first line fired, or None."""
    fired = None
    for _ in range(round(seconds / every)):
        clock.t += every
        fired = fired or dog.poll()
    return fired


def test_fires_once_past_the_timeout_with_one_exact_line():
    dog, clock, aborts, out = _dog(timeout=5.0)
    assert dog.poll_s == 0.5 == poll_interval(5.0)
    dog.step = 17
    dog.enter("allreduce")
    assert _advance(dog, clock, 5.0, 0.5) is None and aborts == []  # exactly the timeout: not yet
    line = _advance(dog, clock, 0.5, 0.5)
    assert aborts == [EXIT_CODE] == [1]
    assert line == (f"lbfl: error: rank 1 (pid {os.getpid()} on {socket.gethostname()}) waited 5.5 s in "
                    f"allreduce at step 17, longer than dist.timeout_s=5: another rank is stopped, dead or "
                    f"unreachable; aborting the job (exit code 1)")
    assert out.getvalue() == line + "\n" and dog.fired == line
    assert " waited 5.1 s " in dog.message("allreduce", 5.04) and " waited 5.3 s " in dog.message("x", 5.3)


def test_short_collectives_never_add_up():
    dog, clock, aborts, _ = _dog(timeout=5.0)
    for _ in range(100):  # 100 collectives of 0.4 s each: 40 s in collectives, none long
        dog.enter("allreduce")
        clock.t += 0.4
        dog.poll()
        dog.leave()
        clock.t += 0.1
        dog.poll()
    assert aborts == []
    dog.enter("barrier")  # the same name again is a new wait (a new slot)
    assert _advance(dog, clock, 4.5, 0.5) is None and aborts == []


def test_time_the_whole_process_was_stopped_does_not_count():
    """A suspended job (every rank stopped, then continued) must not abort: a wake-up counts at most
    two poll intervals, whatever the clock jumped."""
    dog, clock, aborts, _ = _dog(timeout=5.0)
    dog.enter("allreduce")
    clock.t += 0.5
    dog.poll()
    clock.t += 3600.0  # the process was stopped for an hour, its thread too
    dog.poll()
    assert aborts == [] and dog._waited == pytest.approx(1.5)
    assert _advance(dog, clock, 3.5, 0.5) is None  # 5.0 s counted: not yet
    assert _advance(dog, clock, 0.5, 0.5) is not None and aborts == [1]


def test_a_call_entered_long_before_the_first_poll_counts_only_from_the_last_poll():
    dog, clock, aborts, _ = _dog(timeout=5.0)
    clock.t += 100.0
    dog.enter("allgather (object)")
    clock.t += 0.3
    dog.poll()
    assert dog._waited == pytest.approx(0.3)
    assert _advance(dog, clock, 4.5, 0.5) is None
    line = _advance(dog, clock, 0.5, 0.5)
    assert "waited 5.3 s in allgather (object) before the first step" in line and aborts == [1]


def test_not_armed_or_disarmed_never_fires_and_the_timeout_is_validated():
    clock, aborts = Clock(), []
    dog = Watchdog(aborts.append, clock=clock, stream=io.StringIO())
    dog.enter("barrier")
    assert _advance(dog, clock, 60.0, 1.0) is None
    dog.arm(2.0, thread=False)
    dog.disarm()
    assert _advance(dog, clock, 60.0, 1.0) is None and aborts == []
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="dist.timeout_s"):
            dog.arm(bad, thread=False)


def test_the_thread_fires_on_a_real_clock():
    fired = threading.Event()
    codes = []

    def abort(code):
        codes.append(code)
        fired.set()

    dog = Watchdog(abort, rank=0, stream=io.StringIO())
    dog.arm(0.05)
    try:
        dog.enter("bcast")
        assert fired.wait(5.0), "the watchdog thread did not fire"
    finally:
        dog.disarm()
    assert codes == [1] and "in bcast before the first step" in dog.fired


class _Watched:
    def __init__(self, dog):
        self.watch, self.seen = dog, []

    @watched("allreduce")
    def ok(self, x):
        self.seen.append(self.watch.slot)
        return x + 1

    @watched("barrier")
    def boom(self):
        self.seen.append(self.watch.slot)
        raise RuntimeError("lost peer")


def test_watched_calls_fill_the_slot_while_they_run_and_clear_it_after():
    dog, clock, _, _ = _dog()
    obj = _Watched(dog)
    assert obj.ok(1) == 2 and obj.seen == [(clock.t, "allreduce")] and dog.slot is None
    with pytest.raises(RuntimeError):
        obj.boom()
    assert obj.seen[-1] == (clock.t, "barrier") and dog.slot is None
    with dog.watching("stop agreement"):
        assert dog.slot == (clock.t, "stop agreement")
    assert dog.slot is None


def test_the_mpi_plane_and_the_control_plane_calls_are_watched():
    """Every blocking MPI call of Comm and MPIPlane is in the slot, under its name, while it runs (on
    one rank the plane, the control plane and arrive() are called directly: they still reach MPI, which
    is started here explicitly: a process without a launcher would not start it)."""
    from mpi4py import MPI

    from lbfl_mpi.comm.world import Comm

    comm = Comm(MPI.COMM_WORLD)
    real, plane, seen = comm.comm, comm.plane, []

    class Recorder:  # stands for the raw mpi4py communicator: which call, in which slot
        def __getattr__(self, name):
            def call(*args, **kwargs):
                seen.append((name, comm.watch.slot[1] if comm.watch.slot else None))
                return getattr(real, name)(*args, **kwargs)
            return call

    comm.comm = plane.world = Recorder()
    x = torch.arange(4.0)
    plane.allreduce_(x)
    plane.bcast_(x)
    plane.allgatherv(x, [4])
    plane.allgather_array(np.zeros(2))
    work = plane.iallreduce_(x, "b0")
    comm.allgather_obj(1)
    comm.bcast_obj(1)
    comm.barrier()
    comm.control_allgather(np.zeros(5, dtype=np.int64), np.empty((1, 5), dtype=np.int64))
    comm.world_size, comm.wait_poll_s = 2, 1e-4  # arrive() polls only with > 1 rank
    comm.arrive()
    comm.world_size, comm.comm = 1, real
    wait = work._wait
    work._wait = lambda: (seen.append(("Wait", comm.watch.slot[1])), wait())
    work.wait()
    assert seen == [("Allreduce", "allreduce"), ("Bcast", "bcast"), ("Allgatherv", "allgatherv"),
                    ("Allgather", "allgather"), ("Iallreduce", None), ("allgather", "allgather (object)"),
                    ("bcast", "bcast (object)"), ("Barrier", "barrier"), ("Allgather", "allgather (stop agreement)"),
                    ("Ibarrier", "barrier (sync.wait_poll_us)"), ("Wait", "iallreduce")]
    assert comm.watch.slot is None


def test_start_backend_arms_the_watchdog_only_with_several_ranks():
    from lbfl_mpi.comm.world import Comm

    comm = Comm()
    comm.start_backend("mpi", 7.0)
    assert not comm.watch.armed  # one rank: nobody to wait for
    comm.world_size = 2  # as if launched with two ranks (the collectives below still run on one)
    try:
        comm.start_backend("mpi", 7.0)
        assert comm.watch.armed and comm.watch.timeout_s == 7.0 and comm.watch.poll_s == pytest.approx(0.7)
    finally:
        comm.watch.disarm()
        comm.world_size = 1
    comm.step = 3
    assert comm.watch.step == 3
