"""The srun-without-PMIx check (lbfl_mpi/comm/launch.py) against the variables each launcher sets.

The environments are the ones Slurm 22.05 and Open MPI 5 were seen to set: an srun task has
SLURM_STEPID, SLURM_PROCID and SLURM_STEP_NUM_TASKS; the batch shell and the ranks that mpiexec starts
inside an allocation have SLURM_NTASKS and SLURM_PROCID but no step variables; mpiexec's ranks carry
PRTE_LAUNCHED and OMPI_COMM_WORLD_SIZE.
"""
from __future__ import annotations

import pytest

from lbfl_mpi.comm.launch import slurm_world_mismatch

SRUN_TASK = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEPID": "0", "SLURM_STEP_ID": "0",
             "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "1"}
BATCH_SHELL = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}
MPIEXEC_RANK = {**BATCH_SHELL, "PRTE_LAUNCHED": "1", "OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "0"}


def test_srun_singletons_are_named_with_both_counts_and_the_fix():
    msg = slurm_world_mismatch(1, SRUN_TASK)
    assert msg == ("Slurm step 0 started 2 tasks but task 1 sees an MPI world of 1 rank: srun did not connect "
                   "the tasks; launch with `srun --mpi=pmix` or export SLURM_MPI_TYPE=pmix (`srun --mpi=list` "
                   "shows the site's plugins)")
    assert "\n" not in msg


def test_the_plugin_in_use_is_named():
    msg = slurm_world_mismatch(1, {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "4", "SLURM_MPI_TYPE": "pmi2"})
    assert msg.startswith("Slurm step 0 started 4 tasks but task 1 sees an MPI world of 1 rank: "
                          "srun did not connect the tasks (SLURM_MPI_TYPE=pmi2); ")


def test_a_connected_step_passes():
    assert slurm_world_mismatch(2, SRUN_TASK) is None


@pytest.mark.parametrize("env", [
    {},                                                     # no Slurm at all
    BATCH_SHELL,                                            # lbfl started by the batch script itself
    MPIEXEC_RANK,                                           # mpiexec -n 4 inside an sbatch allocation
    {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1"},             # srun -n 1
    {**SRUN_TASK, "PRTE_LAUNCHED": "1"},                    # rank under an Open MPI daemon started by srun
    {**SRUN_TASK, "OMPI_COMM_WORLD_SIZE": "8"},
    {**SRUN_TASK, "MPI_LOCALNRANKS": "4"},                  # rank under a hydra proxy started by srun
    {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_NUM_TASKS"},   # the documented opt-out
    {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "two"},
], ids=["none", "batch-shell", "mpiexec-in-allocation", "one-task", "prte", "ompi", "hydra", "opt-out",
        "garbled"])
def test_not_flagged_outside_an_unconnected_srun_step(env):
    assert slurm_world_mismatch(1, env) is None
    assert slurm_world_mismatch(4, env) is None
