"""Launcher sanity: a Slurm step whose tasks did not become one MPI world.

``srun`` starts every task itself; the tasks join one MPI world only through the MPI plugin that
connects them (``--mpi=pmix`` for Open MPI 5, ``srun --mpi=list`` shows what a site has). Without it
(a site whose ``MpiDefault`` is ``none``, or ``--mpi=pmi2`` with an MPI that only speaks PMIx) every
task starts as a singleton, "rank 0 of 1", and N independent one-client trainers would write into the
same run directory. :func:`slurm_world_mismatch` detects that before anything is written.

The rule uses only step-level variables, which srun sets in every task it starts and which neither
the batch shell nor the processes ``mpiexec`` starts on its own node have: the process is an srun
task (``SLURM_STEPID`` and ``SLURM_PROCID`` set), the step has ``SLURM_STEP_NUM_TASKS`` > 1 tasks, and
the MPI world differs from that count. A process that an MPI launcher started is never flagged
(``mpiexec`` inside an allocation starts its remote daemons with srun, one task per node, so its ranks
on other nodes see that step's variables): Open MPI's ``mpiexec`` marks its processes with
``PRTE_LAUNCHED`` / ``OMPI_COMM_WORLD_SIZE``, MPICH / Intel MPI's hydra with ``MPI_LOCALNRANKS``.
To run independent single-rank trainers inside one multi-task step on purpose, remove the variable:
``env -u SLURM_STEP_NUM_TASKS lbfl train ...`` (each with its own ``run.out_dir``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

MPI_LAUNCHER_MARKERS = ("PRTE_LAUNCHED", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def slurm_world_mismatch(world_size: int, environ: Mapping[str, str] | None = None) -> str | None:
    """One line naming both counts and the fix when this srun task's MPI world is not its step;
    None when the process is not an srun task, the step has one task, or the counts agree."""
    env = os.environ if environ is None else environ
    if "SLURM_STEPID" not in env or "SLURM_PROCID" not in env:
        return None
    if any(k in env for k in MPI_LAUNCHER_MARKERS):
        return None
    try:
        tasks = int(env.get("SLURM_STEP_NUM_TASKS", ""))
    except ValueError:
        return None
    if tasks <= 1 or tasks == world_size:
        return None
    task = env["SLURM_PROCID"]
    mpi = env.get("SLURM_MPI_TYPE")
    plugin = f" (SLURM_MPI_TYPE={mpi})" if mpi else ""
    return (f"Slurm step {env['SLURM_STEPID']} started {tasks} tasks but task {task} sees an MPI world of "
            f"{world_size} rank{'s' if world_size != 1 else ''}: srun did not connect the tasks{plugin}; "
            f"launch with `srun --mpi=pmix` or export SLURM_MPI_TYPE=pmix (`srun --mpi=list` shows the "
            f"site's plugins)")
