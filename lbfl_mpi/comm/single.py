"""A one-process world that does not start MPI: for ``lbfl`` run by hand, without a launcher.

Starting MPI costs a process started without ``mpiexec``/``srun`` about 1.2 s on this kind of machine
(Open MPI 5 forms a singleton: it starts its own runtime first), a fifth of ``lbfl train``'s
start-up, for a world of one rank in which no message is ever sent. :func:`needs_mpi` decides from
the environment whether a launcher started this process; when none did, :class:`Comm` runs on
:class:`SelfComm`, which answers the few calls the control plane makes as MPI's ``COMM_SELF`` would.

Which launchers are recognised: any process whose environment holds one of :data:`LAUNCHER_MARKERS`,
set by Open MPI / PRRTE (``mpiexec``, ``mpirun``), PMIx and PMI-1/2 clients (Slurm's ``srun
--mpi=pmix|pmi2``, MPICH / Intel MPI hydra, Flux, Cray PALS), MVAPICH, IBM's ``jsrun`` and any
``srun`` task. ``LBFL_MPI`` overrides the choice: ``1`` always starts MPI (a launcher this list
misses), ``0`` never does (then a launched job of more than one rank is refused: see cli.py), and
``auto`` (or unset) decides from the markers.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

LAUNCHER_MARKERS = (
    "OMPI_COMM_WORLD_SIZE", "PRTE_LAUNCHED", "PMIX_RANK",  # Open MPI 4/5, PRRTE, any PMIx server
    "PMI_RANK", "PMI_SIZE", "PMI_FD", "MPI_LOCALNRANKS",  # PMI-1/2: MPICH, Intel MPI, Flux, PALS
    "MV2_COMM_WORLD_SIZE", "JSM_NAMESPACE_SIZE", "PALS_RANKID", "ALPS_APP_PE",  # MVAPICH, jsrun, Cray
    "SLURM_STEPID",  # any srun task: launch.slurm_world_mismatch needs the real world to compare
)
MPI_CHOICES = ("auto", "1", "0")


def needs_mpi(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process must start MPI: ``LBFL_MPI=1``, or ``auto`` and a launcher marker set."""
    env = os.environ if environ is None else environ
    choice = env.get("LBFL_MPI", "auto").strip().lower() or "auto"
    if choice == "1":
        return True
    if choice == "0":
        return False
    return any(k in env for k in LAUNCHER_MARKERS)


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """The rank count a launcher announced (0 when none did), to refuse ``LBFL_MPI=0`` under one."""
    env = os.environ if environ is None else environ
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "JSM_NAMESPACE_SIZE",
                "SLURM_STEP_NUM_TASKS"):
        try:
            return int(env.get(key, ""))
        except ValueError:
            continue
    return 0


class _Done:
    """A request that has already completed (``Ibarrier`` on one rank)."""

    def Test(self) -> bool:  # noqa: N802 - mpi4py's names
        return True

    def Wait(self) -> None:  # noqa: N802
        return None


class SelfComm:
    """The subset of mpi4py's ``Intracomm`` that Comm's control plane uses, for a world of one rank:
    object collectives return the caller's own value, barriers return at once, Abort exits."""

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def Split_type(self, split_type=None, key: int = 0) -> SelfComm:  # noqa: N802
        return self

    def allgather(self, obj) -> list:
        return [obj]

    def alltoall(self, objs: list) -> list:
        if len(objs) != 1:
            raise ValueError(f"alltoall of {len(objs)} objects on a world of 1 rank")
        return list(objs)

    def bcast(self, obj, root: int = 0):
        if root != 0:
            raise ValueError(f"bcast root {root} on a world of 1 rank")
        return obj

    def Allgather(self, local, out):  # noqa: N802
        out[0] = local
        return out

    def Barrier(self) -> None:  # noqa: N802
        return None

    def Ibarrier(self) -> _Done:  # noqa: N802
        return _Done()

    def Abort(self, code: int = 1) -> None:  # noqa: N802
        os._exit(code)
