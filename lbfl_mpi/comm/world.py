"""The job as one client sees it: rank, world size, local rank, device choice, collectives, abort.

:class:`Comm` starts MPI (mpi4py), which every job is launched with, and keeps the control plane on
it: object collectives, barriers and abort. A process that no launcher started runs on a one-rank
stand-in instead and never starts MPI (single.py). Tensor collectives take one flat, contiguous tensor and go
through the data plane chosen by ``dist.backend``: :class:`~.mpi_plane.MPIPlane` (mpi4py buffer
calls, pinned host staging for CUDA tensors unless the MPI is CUDA-aware) or a torch.distributed
process group bootstrapped over MPI (:mod:`.torch_plane`).

Once :meth:`Comm.start_backend` has run, every MPI call that can block is watched (watchdog.py): a
rank that waits in one longer than ``dist.timeout_s`` prints one line and aborts the job (exit 1).
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
import traceback
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from .single import SelfComm, needs_mpi
from .watchdog import Watchdog, watched

if TYPE_CHECKING:
    import torch


def _loaded_libmpi() -> str | None:
    """Path of the libmpi shared object this process loaded (mpi4py dlopens it)."""
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rsplit(None, 1)[-1]
                if "/libmpi" in path and ".so" in path and "libmpi_" not in os.path.basename(path):
                    return path
    except OSError:
        pass
    return None


def detect_cuda_aware() -> bool:
    """True when the MPI library says it can read device pointers; never assumed."""
    env = os.environ.get("LBFL_CUDA_AWARE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    path = _loaded_libmpi()
    if path is None:
        return False
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return False
    for name in ("MPIX_Query_cuda_support",):  # Open MPI
        fn = getattr(lib, name, None)
        if fn is not None:
            try:
                return bool(fn())
            except Exception:  # noqa: BLE001 - a broken extension query means "not CUDA-aware"
                return False
    return False


class Comm:
    """The client's view of the job. ``rank``/``world_size``/``local_rank`` mean the same everywhere."""

    def __init__(self, comm=None):
        """``comm``: the mpi4py communicator the job runs on (default MPI.COMM_WORLD); a test or a
        driver may pass a duplicate or a sub-communicator to run several jobs side by side. With no
        ``comm`` and no launcher (single.needs_mpi), MPI is not started: a one-rank SelfComm."""
        if comm is None and not needs_mpi():
            self.MPI, self.comm = None, SelfComm()
        else:
            from mpi4py import MPI  # initialises MPI

            self.MPI = MPI
            self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        self.local_comm = self.comm.Split_type(getattr(self.MPI, "COMM_TYPE_SHARED", None), key=self.rank)
        self.local_rank = self.local_comm.Get_rank()
        self.local_size = self.local_comm.Get_size()
        self.cuda_aware = detect_cuda_aware()
        self._device = None  # torch.device("cpu") until pick_device(); torch is imported on first use
        self.watch = Watchdog(self._abort_from_watchdog, self.rank)  # armed by start_backend()
        self._plane = None  # MPIPlane on first use; replaced by start_backend() for nccl/gloo
        self.wait_poll_s = 0.0  # > 0: wait for the other ranks sleeping, not spinning (see arrive())

    # -------------------------------------------------------------------------------- device
    @property
    def device(self) -> torch.device:
        if self._device is None:
            import torch

            self._device = torch.device("cpu")
        return self._device

    @device.setter
    def device(self, device: torch.device) -> None:
        self._device = device

    @property
    def plane(self):
        """The data plane: MPIPlane until start_backend() chooses another (created on first use, so a
        process that stops on bad input never imports torch)."""
        if self._plane is None:
            from .mpi_plane import MPIPlane

            self._plane = MPIPlane(self, self.cuda_aware)
        return self._plane

    @plane.setter
    def plane(self, plane) -> None:
        self._plane = plane

    def pick_device(self, prefer: str = "auto") -> torch.device:
        """``cuda:(local_rank % gpus)`` when a GPU exists, else CPU with torch threads capped per rank."""
        import torch

        if prefer != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() > 0:
            idx = self.local_rank % torch.cuda.device_count()
            torch.cuda.set_device(idx)
            self.device = torch.device("cuda", idx)
        else:
            self._device = None  # torch.device("cpu") until pick_device(); torch is imported on first use
            torch.set_num_threads(cpu_threads(self.local_size))
        return self.device

    @property
    def step(self) -> int | None:
        """The training step in progress (the watchdog's message names it); None before the first."""
        return self.watch.step

    @step.setter
    def step(self, step: int | None) -> None:
        self.watch.step = step

    def _abort_from_watchdog(self, code: int) -> None:
        time.sleep(0.2)  # the launcher forwards the watchdog's line before MPI_Abort's own banner
        self.comm.Abort(code)  # from the watchdog's thread: MPI runs with MPI_THREAD_MULTIPLE
        os._exit(code)

    def arrive(self) -> None:
        """With ``wait_poll_s > 0``: block until every rank has reached this point by polling a
        non-blocking barrier and sleeping ``wait_poll_s`` between polls.

        MPI implementations busy-poll inside a blocking collective. When ranks share cores (more
        ranks than cores, or ranks that also feed a shared GPU), an early rank's spinning takes CPU
        from the ranks still computing, which slows exactly the ranks everyone waits for. Calling
        this before the step's collective moves the wait out of the spin loop; the collective then
        starts with every rank present. Costs one extra barrier latency per call.
        """
        if self.wait_poll_s <= 0 or self.world_size == 1:
            return
        with self.watch.watching("barrier (sync.wait_poll_us)"):
            req = self.comm.Ibarrier()
            while not req.Test():
                time.sleep(self.wait_poll_s)

    # ------------------------------------------------------------------------------ data plane
    def start_backend(self, requested: str = "mpi", timeout_s: float = 300.0) -> str:
        """Choose the data plane (``dist.backend``; see torch_plane.select_backend) and start it.
        Collective. Every data-plane collective below goes through it from then on; object
        collectives, barriers and aborts stay on MPI. Arms the MPI watchdog with ``timeout_s`` (> 1
        rank): from here on no MPI call waits longer."""
        from .torch_plane import TorchPlane, init_torch_dist, select_backend

        if self.world_size > 1:
            self.watch.arm(timeout_s)
        name = select_backend(requested, self)
        if name != "mpi":
            init_torch_dist(self, name, timeout_s, self.device if self.device.type == "cuda" else None)
            self.plane = TorchPlane(name, self, self.device)
        elif self.plane.name != "mpi":  # an earlier start on this Comm chose a process group
            from .mpi_plane import MPIPlane

            self.plane = MPIPlane(self, self.cuda_aware)
        return name

    @property
    def backend(self) -> str:
        return self.plane.name

    def staging(self, device: torch.device | None = None) -> str:
        """How tensors of ``device`` (default: this rank's) reach the network: host, pinned-host,
        cuda-aware or device."""
        return self.plane.staging(device or self.device)

    def allreduce_(self, flat: torch.Tensor) -> torch.Tensor:
        """In-place sum of a flat contiguous tensor over all ranks."""
        assert flat.is_contiguous() and flat.dim() == 1, "collectives take one flat contiguous buffer"
        if self.world_size == 1:
            return flat
        self.arrive()
        return self.plane.allreduce_(flat)

    def iallreduce_(self, flat: torch.Tensor, slot: str):
        """Start an in-place sum; returns a work handle with ``wait()`` (None on a single rank).
        ``slot`` names the reused staging buffer, one per concurrently outstanding collective."""
        assert flat.is_contiguous() and flat.dim() == 1, "collectives take one flat contiguous buffer"
        if self.world_size == 1:
            return None
        return self.plane.iallreduce_(flat, slot)

    def bcast_(self, flat: torch.Tensor, root: int = 0) -> torch.Tensor:
        """In-place broadcast of a flat contiguous tensor from ``root``."""
        assert flat.is_contiguous() and flat.dim() == 1
        if self.world_size == 1:
            return flat
        return self.plane.bcast_(flat, root)

    def allgatherv(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Concatenation over ranks of 1-D tensors whose sizes differ (``counts[r]`` from rank r), on
        ``local``'s device."""
        assert local.is_contiguous() and local.dim() == 1 and local.numel() == counts[self.rank]
        if self.world_size == 1:
            return local.clone()
        return self.plane.allgatherv(local, counts)

    def allgather_array(self, local: np.ndarray) -> np.ndarray:
        """Allgather of equal-size numpy arrays -> array of shape [world_size, *local.shape]."""
        local = np.ascontiguousarray(local)
        if self.world_size == 1:
            return local[None].copy()
        return self.plane.allgather_array(local)

    @watched("allgather (object)")
    def allgather_obj(self, obj):
        return self.comm.allgather(obj)

    @watched("alltoall (object)")
    def alltoall_obj(self, objs: list):
        """Object i of ``objs`` goes to rank i; returns the objects every rank sent to this one."""
        return self.comm.alltoall(objs)

    @watched("bcast (object)")
    def bcast_obj(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    @watched("allgather (stop agreement)")
    def control_allgather(self, local: np.ndarray, out: np.ndarray) -> np.ndarray:
        """MPI Allgather of equal-size numpy arrays into ``out`` ([world_size, *local.shape]), on MPI
        whatever the data plane (control messages such as the stop agreement)."""
        self.comm.Allgather(local, out)
        return out

    @watched("barrier")
    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End the whole job; other ranks never wait for a dead one."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.world_size > 1:
            self.comm.Abort(code)
        os._exit(code)


def cpu_threads(local_size: int) -> int:
    """Torch threads for one CPU rank: the cores it may run on shared by the ranks on this node.

    An explicit OMP_NUM_THREADS wins. Under a binding launcher each rank already sees only its own
    cores; oversubscribed, every rank sees all of them, so divide.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        try:
            return max(1, int(os.environ["OMP_NUM_THREADS"]))
        except ValueError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))


@contextmanager
def abort_on_error(comm: Comm | None):
    """Run the body; an uncaught exception on any rank prints its traceback and aborts every rank.

    ``SystemExit`` passes through untouched, so deliberate, agreed-upon exits keep their code.
    """
    try:
        yield
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - anything uncaught must not leave peers hanging
        rank = comm.rank if comm is not None else 0
        sys.stderr.write(f"[rank {rank}] uncaught exception, aborting the job:\n{traceback.format_exc()}")
        if comm is not None and comm.world_size > 1:
            comm.abort(1)
        raise
