"""The torch.distributed data plane (``dist.backend = "nccl" | "gloo"``), bootstrapped from MPI.

MPI always starts the job (mpirun/srun) and gives rank, world size and local rank. For a torch
backend, rank 0 opens the rendezvous store (``MASTER_ADDR``/``MASTER_PORT`` when set, otherwise its
hostname and a free port chosen by the OS), broadcasts host and port over MPI, and every rank joins
the process group through it. No torchrun, no environment contract beyond MPI's.

Which backend ``auto`` picks, and which requests are refused before anything can hang, is decided
collectively by :func:`select_backend`, so every rank takes the same decision.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import numpy as np
import torch

from .mpi_plane import StagedWork

BACKENDS = ("auto", "mpi", "nccl", "gloo")


class BackendError(RuntimeError):
    """A data-plane backend that cannot start here; the CLI prints it on one line and exits 2."""


def _own_gpu(comm) -> tuple[bool, int]:
    """(whether this rank can have a CUDA device of its own on its node, the node's device count)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return n > 0 and comm.local_size <= n, n


def select_backend(requested: str, comm) -> str:
    """The backend every rank uses, from ``dist.backend``; the same answer (or error) on every rank.

    auto: nccl when every rank on every node has a CUDA device of its own, mpi otherwise (CPU, or
    several ranks per GPU, which NCCL refuses). nccl without CUDA, or with ranks sharing a GPU, and a
    torch backend missing from this build of torch raise :class:`BackendError` on every rank.
    """
    if requested not in BACKENDS:
        raise BackendError(f"dist.backend={requested!r}: must be one of {', '.join(BACKENDS)}")
    facts = comm.allgather_obj(_own_gpu(comm) + (comm.local_size,))
    every_own = all(own for own, _, _ in facts)
    if requested == "auto":
        return "nccl" if every_own and _available("nccl") else "mpi"
    if requested == "mpi":
        return "mpi"
    if not _available(requested):
        raise BackendError(f"dist.backend={requested!r}: this torch build has no {requested} support "
                           f"(torch.distributed.is_{requested}_available() is False)")
    if requested == "nccl" and not every_own:
        no_cuda = [r for r, (_, n, _) in enumerate(facts) if n == 0]
        if no_cuda:
            raise BackendError(f"dist.backend='nccl': no CUDA device on rank(s) {_short(no_cuda)}; use "
                               f"dist.backend=mpi or gloo (or auto)")
        shared = [r for r, (own, _, _) in enumerate(facts) if not own]
        raise BackendError(f"dist.backend='nccl': ranks {_short(shared)} share a GPU with another rank "
                           f"({facts[shared[0]][2]} ranks on a node with {facts[shared[0]][1]} GPU(s)), "
                           f"which NCCL refuses; use dist.backend=mpi (or auto)")
    return requested


def _short(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:8])) + (", ..." if len(ranks) > 8 else "")


def _available(name: str) -> bool:
    import torch.distributed as dist

    if not dist.is_available():
        return False
    return bool(getattr(dist, f"is_{name}_available")())


def _rendezvous_host(comm) -> str:
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    if comm.local_size == comm.world_size:  # one node: loopback always works
        return "127.0.0.1"
    return socket.gethostname()


def init_torch_dist(comm, backend: str, timeout_s: float = 300.0, device: torch.device | None = None):
    """Join (or create) the default torch.distributed process group for ``backend`` over MPI.

    Rank 0 creates the TCP store; its host and port travel by MPI broadcast. A store that cannot be
    opened on rank 0 raises :class:`BackendError` on every rank; a rank that cannot reach it fails
    after ``timeout_s`` (and the job aborts), so no rank waits forever.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.group.WORLD
    timeout = timedelta(seconds=timeout_s)
    info, store = None, None
    if comm.rank == 0:
        host = _rendezvous_host(comm)
        port = int(os.environ.get("MASTER_PORT", "0") or 0)
        try:
            store = dist.TCPStore(host, port, comm.world_size, is_master=True, timeout=timeout,
                                  wait_for_workers=False)
            info = (host, store.port, None)
        except Exception as e:  # noqa: BLE001 - reported identically on every rank below
            info = (host, port, f"cannot open the {backend} rendezvous on {host}:{port}: {e}")
    host, port, error = comm.bcast_obj(info, root=0)
    if error:
        raise BackendError(error.splitlines()[0])
    if store is None:
        store = dist.TCPStore(host, port, comm.world_size, is_master=False, timeout=timeout)
    kwargs = {}
    if backend == "nccl" and device is not None:
        kwargs["device_id"] = device
    dist.init_process_group(backend, store=store, rank=comm.rank, world_size=comm.world_size, timeout=timeout,
                            **kwargs)
    return dist.group.WORLD


class TorchPlane:
    """Flat-buffer collectives through a torch.distributed process group. NCCL works on the rank's CUDA
    device; gloo on host tensors (CUDA tensors are staged through pinned host memory)."""

    def __init__(self, backend: str, comm, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.name = backend
        self.world_size, self.rank = comm.world_size, comm.rank
        self.device = device if backend == "nccl" else torch.device("cpu")
        self._pinned: dict[tuple, torch.Tensor] = {}

    def staging(self, device: torch.device) -> str:
        if device.type != "cuda":
            return "host"
        return "device" if self.name == "nccl" else "pinned-host"

    def _on_plane(self, t: torch.Tensor, slot: str = "send") -> tuple[torch.Tensor, bool]:
        if t.device == self.device:
            return t, False
        if self.device.type == "cpu":  # gloo with a CUDA tensor: pinned host copy
            key = (slot, t.dtype)
            buf = self._pinned.get(key)
            if buf is None or buf.numel() < t.numel():
                buf = torch.empty(max(t.numel(), 1), dtype=t.dtype, pin_memory=True)
                self._pinned[key] = buf
            buf = buf[:t.numel()]
            buf.copy_(t.reshape(-1), non_blocking=True)
            torch.cuda.current_stream(t.device).synchronize()
            return buf, True
        return t.to(self.device), True  # nccl with a host tensor (small statistics)

    def allreduce_(self, flat: torch.Tensor) -> torch.Tensor:
        t, staged = self._on_plane(flat)
        self.dist.all_reduce(t)
        if staged:
            flat.copy_(t.view_as(flat))
        return flat

    def iallreduce_(self, flat: torch.Tensor, slot: str) -> StagedWork:
        """Start an ``async_op=True`` allreduce (for NCCL, ``wait()`` makes the current stream wait on
        the communication stream: the host does not block)."""
        t, staged = self._on_plane(flat, slot)
        work = self.dist.all_reduce(t, async_op=True)
        return StagedWork(work.wait, work.is_completed, flat, t if staged else None)

    def bcast_(self, flat: torch.Tensor, root: int = 0) -> torch.Tensor:
        t, staged = self._on_plane(flat)
        self.dist.broadcast(t, src=root)
        if staged:
            flat.copy_(t.view_as(flat))
        return flat

    def allgatherv(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Ragged allgather as one padded all_gather (torch.distributed has no allgatherv)."""
        width = max(int(c) for c in counts)
        send = torch.zeros(width, dtype=local.dtype, device=self.device)
        send[:local.numel()] = local.to(self.device)
        out = torch.empty(self.world_size * width, dtype=local.dtype, device=self.device)
        self.dist.all_gather(list(out.chunk(self.world_size)), send)
        parts = [out[r * width:r * width + int(c)] for r, c in enumerate(counts)]
        return torch.cat(parts).to(local.device)

    def allgather_array(self, local: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(local)).to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self.dist.all_gather(out, t)
        return np.stack([o.cpu().numpy() for o in out])


def shutdown_torch_dist() -> None:
    """Destroy the default process group, if any (at the end of a run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
