"""The MPI data plane: flat-buffer collectives through mpi4py's upper-case (buffer) calls.

CUDA tensors are staged through pinned host memory unless the MPI library reports CUDA support
(``MPIX_Query_cuda_support``) or the user forces it with ``LBFL_CUDA_AWARE=1``; pageable staging
measured about 40x slower than pinned on a non-CUDA-aware Open MPI, so every staging buffer is pinned
and reused (one per slot: "send", "recv", one per gradient bucket).

Every call that can block (the collectives below, and ``wait()`` of a started one) is in the rank's
MPI watchdog slot while it runs (watchdog.py): a wait longer than ``dist.timeout_s`` aborts the job.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .watchdog import watched


def chunk_bytes_from_env() -> int:
    """``LBFL_ALLREDUCE_CHUNK_MB`` as bytes (default 4 MiB; 0 = no slicing)."""
    text = os.environ.get("LBFL_ALLREDUCE_CHUNK_MB", "4")
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f"LBFL_ALLREDUCE_CHUNK_MB={text!r}: expected a number of MiB (0: no slicing)") from None
    if not mb >= 0 or mb == float("inf"):
        raise ValueError(f"LBFL_ALLREDUCE_CHUNK_MB={text!r}: must be a finite number >= 0")
    return int(mb * 2**20)


class StagedWork:
    """A started non-blocking collective (either data plane); ``wait()`` completes it and copies a
    staged result back into ``flat``, ``test()`` drives progress and says whether it is done (Open MPI
    progresses non-blocking collectives only inside MPI calls). With ``watch`` (a Watchdog), ``wait()``
    is in its slot as ``what`` while it blocks."""

    def __init__(self, wait, test, flat: torch.Tensor, staged: torch.Tensor | None, watch=None, what: str = ""):
        self._wait, self._test, self.flat, self.staged = wait, test, flat, staged
        self.watch, self.what = watch, what

    def test(self) -> bool:
        return bool(self._test())

    def wait(self) -> None:
        if self.watch is None:
            self._wait()
        else:
            with self.watch.watching(self.what):
                self._wait()
        if self.staged is not None:
            self.flat.copy_(self.staged.view_as(self.flat), non_blocking=True)


class MPIPlane:
    """Collectives over ``comm.comm`` (MPI_COMM_WORLD). ``staging`` names the path CUDA tensors take."""

    name = "mpi"

    def __init__(self, comm, cuda_aware: bool):
        self.comm = comm
        self.MPI = comm.MPI
        self.world = comm.comm
        self.world_size = comm.world_size
        self.rank = comm.rank
        self.cuda_aware = cuda_aware
        self.watch = comm.watch
        try:
            self.chunk_bytes = chunk_bytes_from_env()
        except ValueError:  # the CLI reports a bad value on one line before any collective runs
            self.chunk_bytes = 4 * 2**20
        self._pinned: dict[tuple, torch.Tensor] = {}

    def staging(self, device: torch.device) -> str:
        if device.type != "cuda":
            return "host"
        return "cuda-aware" if self.cuda_aware else "pinned-host"

    # ------------------------------------------------------------------------------ staging
    def _host(self, t: torch.Tensor, slot: str = "send") -> tuple[torch.Tensor, bool]:
        """A host tensor MPI may read/write, and whether it is a staging copy of ``t``."""
        if t.device.type == "cpu":
            return t, False
        if self.cuda_aware:
            torch.cuda.current_stream(t.device).synchronize()  # MPI must see finished kernels
            return t, False
        buf = self._pinned_buffer(t.numel(), t.dtype, slot)
        buf.copy_(t.reshape(-1), non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return buf, True

    def _pinned_buffer(self, numel: int, dtype: torch.dtype, slot: str) -> torch.Tensor:
        """A pinned host view of ``numel`` elements; one growing buffer per (slot, dtype), reused."""
        key = (slot, dtype)
        buf = self._pinned.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype, pin_memory=True)
            self._pinned[key] = buf
        return buf[:numel]

    @staticmethod
    def _buf(t: torch.Tensor):
        return t.numpy() if t.device.type == "cpu" else t  # CUDA-aware: mpi4py reads DLPack

    # -------------------------------------------------------------------------- collectives
    @watched("allreduce")
    def allreduce_(self, flat: torch.Tensor) -> torch.Tensor:
        """In-place sum. Buffers above ``chunk_bytes`` are reduced as consecutive slices (one
        MPI_Allreduce each): Open MPI's large-message path measured 4x slower on one 44 MB buffer than
        on 4 MB slices of it (benchmarks/bench_sync.py). ``LBFL_ALLREDUCE_CHUNK_MB=0`` disables slicing."""
        host, staged = self._host(flat)
        buf = self._buf(host)
        # at least one element per slice: a slice size below one element must not make empty slices
        step = max(1, self.chunk_bytes // host.element_size() if self.chunk_bytes > 0 else host.numel())
        for i in range(0, host.numel(), step):
            self.world.Allreduce(self.MPI.IN_PLACE, buf[i:i + step])
        if staged:
            flat.copy_(host, non_blocking=True)
        return flat

    def iallreduce_(self, flat: torch.Tensor, slot: str) -> StagedWork:
        """Start an in-place MPI_Iallreduce; ``slot`` names the reused pinned staging buffer."""
        host, staged = self._host(flat, slot)
        req = self.world.Iallreduce(self.MPI.IN_PLACE, self._buf(host))
        return StagedWork(req.Wait, req.Test, flat, host if staged else None, self.watch, "iallreduce")

    @watched("bcast")
    def bcast_(self, flat: torch.Tensor, root: int = 0) -> torch.Tensor:
        host, staged = self._host(flat)
        self.world.Bcast(self._buf(host), root=root)
        if staged:
            flat.copy_(host, non_blocking=True)
        return flat

    @watched("allgatherv")
    def allgatherv(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        send, staged = self._host(local)
        total = int(sum(counts))
        if staged:
            recv = self._pinned_buffer(total, local.dtype, slot="recv")
        else:
            recv = torch.empty(total, dtype=local.dtype, device=local.device)
        self.world.Allgatherv(self._buf(send), [self._buf(recv), [int(c) for c in counts]])
        return recv.to(local.device, non_blocking=True) if staged else recv

    @watched("allgather")
    def allgather_array(self, local: np.ndarray) -> np.ndarray:
        out = np.empty((self.world_size,) + local.shape, dtype=local.dtype)
        self.world.Allgather(local, out)
        return out
