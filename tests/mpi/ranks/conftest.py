"""Fixtures and hooks for the rank tests: every rank of one mpiexec launch runs every test.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks

(tests/mpi/test_world_sizes.py launches this at N = 1, 2 and 4.) Rank 0 prints pytest's report; every
other rank writes its report to ``rank<R>of<N>.log`` in ``$LBFL_RANK_LOG_DIR`` (default: the system's
temporary directory). A test that fails or errors on any rank prints that rank's report on its stderr
and aborts the whole job (MPI_Abort), so no rank is left waiting in a collective.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from lbfl_mpi.comm.torch_plane import shutdown_torch_dist
from lbfl_mpi.comm.world import Comm

from ._world import RANK, SIZE, WORLD


def rank_log_path() -> Path:
    return Path(os.environ.get("LBFL_RANK_LOG_DIR") or tempfile.gettempdir()) / f"rank{RANK}of{SIZE}.log"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # the terminal reporter, made after this hook, writes to whatever sys.stdout is then
    if RANK > 0:
        path = rank_log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "w", buffering=1)  # open until the session ends
        config.add_cleanup(log.close)
        config.add_cleanup(lambda out=sys.stdout: setattr(sys, "stdout", out))
        sys.stdout = log


def _fail_job(what: str, text: str) -> None:
    """Print a failure with its rank and end every rank; on a single rank pytest reports it as usual."""
    if SIZE == 1:
        return
    err = sys.__stderr__
    err.write(f"\n[rank {RANK} of {SIZE}] {what}\n{text}\n[rank {RANK} of {SIZE}] aborting the job\n")
    err.flush()
    sys.stdout.flush()
    WORLD.Abort(1)


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    if report.failed:
        captured = "".join(f"\n----- {title}\n{text}" for title, text in report.sections)
        _fail_job(f"{report.nodeid} FAILED ({report.when})", report.longreprtext + captured)


@pytest.hookimpl(trylast=True)
def pytest_collectreport(report):
    if report.failed:
        _fail_job(f"collecting {report.nodeid or '.'} FAILED", report.longreprtext)


def pytest_internalerror(excrepr):
    _fail_job("pytest internal error", str(excrepr))


@pytest.fixture(scope="session")
def world_size() -> int:
    return SIZE


@pytest.fixture
def new_comm():
    """Makes ``Comm`` objects over fresh duplicates of MPI_COMM_WORLD (each with its own MPI data plane),
    freed after the test."""
    made = []

    def make() -> Comm:
        c = Comm(comm=WORLD.Dup())
        made.append(c)
        return c

    yield make
    for c in made:
        c.local_comm.Free()
        c.comm.Free()


@pytest.fixture
def comm(new_comm) -> Comm:
    """A Comm over a duplicate of MPI_COMM_WORLD, on the CPU."""
    c = new_comm()
    c.pick_device("cpu")
    return c


@pytest.fixture
def shared_dir(comm):
    """A directory every rank writes into (rank 0 makes it and removes it after the test); under
    ``$LBFL_RANK_TMP`` when set, which must then be a folder every node sees."""
    path = comm.bcast_obj(tempfile.mkdtemp(prefix="lbfl-ranks-", dir=os.environ.get("LBFL_RANK_TMP"))
                          if comm.rank == 0 else None)
    yield Path(path)
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="session", autouse=True)
def torch_process_group():
    """One torch.distributed process group for the session: the first test that starts the gloo backend
    makes it, every later start reuses it (init_torch_dist returns the group it finds), and it is
    destroyed here at the end."""
    yield
    shutdown_torch_dist()
    WORLD.Barrier()
