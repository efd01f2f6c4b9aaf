import os

import torch

from lbfl_mpi.comm.world import Comm, cpu_threads, detect_cuda_aware


def test_cpu_threads_divides_cores_between_local_ranks(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(1) == cores
    assert cpu_threads(cores * 4) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(8) == 3


def test_cuda_aware_override(monkeypatch):
    monkeypatch.setenv("LBFL_CUDA_AWARE", "1")
    assert detect_cuda_aware() is True
    monkeypatch.setenv("LBFL_CUDA_AWARE", "0")
    assert detect_cuda_aware() is False


def test_singleton_without_launcher():
    comm = Comm()
    assert (comm.rank, comm.world_size, comm.local_rank) == (0, 1, 0)
    assert comm.pick_device("cpu") == torch.device("cpu")
    x = torch.arange(4.0)
    assert comm.allreduce_(x) is x and x.tolist() == [0, 1, 2, 3]


def test_starting_the_mpi_plane_after_a_process_group_switches_back():
    """A Comm whose plane an earlier start set to a process group gets the MPI plane back when
    dist.backend=mpi is started (start_backend returns the plane it set, never a stale one)."""
    from types import SimpleNamespace

    from lbfl_mpi.comm.mpi_plane import MPIPlane

    comm = Comm()
    comm.plane = SimpleNamespace(name="gloo")  # as left by an earlier start_backend("gloo")
    assert comm.start_backend("mpi") == "mpi"
    assert isinstance(comm.plane, MPIPlane) and comm.backend == "mpi"
