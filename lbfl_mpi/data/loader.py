"""Per-client infinite batch streams with resumable state, and sharded evaluation batches.

The training stream of a client is the concatenation of permutations of its indices; pass ``p`` is
``np.random.default_rng([seed, rank, p]).permutation(indices)``. Its position is (pass, offset), so a
checkpoint holds three integers and a resumed run continues with exactly the same batches.

In-memory datasets (:class:`TensorData`) can be kept on the rank's device: given ``device``, the
loader copies the whole set there once and gathers each batch there from one index tensor, so a
step moves only the batch's indices from the host. The batches are the same values in the same
order as without ``device``; only where they live differs.
"""
from __future__ import annotations

import numpy as np
import torch

from .datasets import TensorData


class _IndexStream:
    """Deterministic infinite index stream positioned at (pass, offset)."""

    def __init__(self, indices: np.ndarray, seed: int, rank: int, pass_: int = 0, offset: int = 0):
        self.indices, self.seed, self.rank = indices, seed, rank
        self.pass_, self.offset = pass_, offset
        self._perm_pass, self._perm = -1, None

    def _permutation(self) -> np.ndarray:
        if self._perm_pass != self.pass_:
            self._perm = np.random.default_rng([self.seed, self.rank, self.pass_]).permutation(self.indices)
            self._perm_pass = self.pass_
        return self._perm

    def take(self, b: int) -> np.ndarray:
        out, need = [], b
        while need > 0:
            perm = self._permutation()
            chunk = perm[self.offset:self.offset + need]
            out.append(chunk)
            need -= len(chunk)
            self.offset += len(chunk)
            if self.offset == len(perm):  # a batch may straddle two passes
                self.pass_, self.offset = self.pass_ + 1, 0
        return np.concatenate(out)


class _BatchSampler:
    """Infinite batch sampler for a DataLoader, replaying the stream from a saved position."""

    def __init__(self, indices, seed, rank, pass_, offset, batch_size):
        self.stream = _IndexStream(indices, seed, rank, pass_, offset)
        self.batch_size = batch_size

    def __iter__(self):
        while True:
            yield self.stream.take(self.batch_size).tolist()


def _stack(items) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*items)
    return torch.stack([torch.as_tensor(x) for x in xs]).float(), torch.as_tensor(ys, dtype=torch.int64)


class ClientLoader:
    """Infinite per-client batch stream: cycles through this client's partition, reshuffling each pass.

    ``batch_size`` may be changed between calls to :meth:`next_batch`. With ``workers > 0`` (only for
    non-tensor datasets) a DataLoader prefetches ahead of the trainer; the saved state still counts only
    the batches returned by ``next_batch``, and the worker iterator is rebuilt from that state whenever
    the batch size changes or :meth:`load_state_dict` is called, so prefetched batches are never skipped.

    ``device``: for a :class:`TensorData`, keep the dataset on that device (copied once, shared
    with other loaders of the same dataset) and return batches already there; ``device_resident``
    says so. Ignored for other datasets (image files), whose batches are built on the host.
    """

    def __init__(self, dataset, indices: np.ndarray, batch_size: int, seed: int, rank: int, workers: int = 0,
                 device: torch.device | str | None = None):
        self.device_resident = isinstance(dataset, TensorData) and device is not None
        self.dataset = dataset.to(device) if self.device_resident else dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise ValueError(f"rank {rank}: ClientLoader needs a non-empty partition")
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.workers = int(seed), int(rank), int(workers)
        self.samples_seen = 0
        self._pos = _IndexStream(self.indices, self.seed, self.rank)
        self._tensor = isinstance(dataset, TensorData)
        self._iter, self._iter_bs = None, None

    @property
    def epoch(self) -> float:
        return self.samples_seen / len(self.indices)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = int(self.batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        if self.workers > 0 and not self._tensor:
            if self._iter is None or self._iter_bs != b:
                self._start_workers(b)
            x, y = next(self._iter)
            self._pos.take(b)  # keep the trainer-side position in step with what was consumed
        else:
            idx = self._pos.take(b)
            if self._tensor:
                # [b] int64 indices: the only host-to-device copy of a resident step
                t = torch.from_numpy(idx).to(self.dataset.y.device)
                x, y = self.dataset.x[t], self.dataset.y[t]
            else:
                x, y = _stack([self.dataset[int(i)] for i in idx])
        self.samples_seen += b
        return x.float(), y.long()

    def _start_workers(self, b: int) -> None:
        from torch.utils.data import DataLoader
        self.close()
        sampler = _BatchSampler(self.indices, self.seed, self.rank, self._pos.pass_, self._pos.offset, b)
        dl = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.workers, collate_fn=_stack)
        self._iter, self._iter_bs = iter(dl), b

    def close(self) -> None:
        """Stop worker processes, if any (they are restarted on the next batch)."""
        it, self._iter, self._iter_bs = self._iter, None, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def state_dict(self) -> dict:
        return {"pass": self._pos.pass_, "offset": self._pos.offset, "samples_seen": self.samples_seen}

    def load_state_dict(self, d: dict) -> None:
        offset = int(d["offset"])
        if not 0 <= offset < len(self.indices):
            raise ValueError(f"loader state offset {offset} is outside this partition of "
                             f"{len(self.indices)} samples (different data or partition?)")
        self.close()
        self._pos = _IndexStream(self.indices, self.seed, self.rank, int(d["pass"]), offset)
        self.samples_seen = int(d["samples_seen"])


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [start, end) of ``n`` items for ``rank``; shards tile range(n) exactly."""
    return rank * n // world_size, (rank + 1) * n // world_size


def eval_batches(dataset, rank: int, world_size: int, batch_size: int, workers: int = 0,
                 device: torch.device | str | None = None):
    """Yield (x, y) batches of this rank's contiguous shard of ``dataset`` (possibly none).

    ``device``: as for :class:`ClientLoader`; a :class:`TensorData` is copied there on the first
    call only, and its batches are slices of that copy."""
    start, end = shard_range(len(dataset), rank, world_size)
    if isinstance(dataset, TensorData):
        if device is not None:
            dataset = dataset.to(device)
        for i in range(start, end, batch_size):
            j = min(i + batch_size, end)
            yield dataset.x[i:j].float(), dataset.y[i:j].long()
        return
    if workers > 0:
        from torch.utils.data import DataLoader, Subset
        dl = DataLoader(Subset(dataset, range(start, end)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_stack)
        yield from dl
        return
    for i in range(start, end, batch_size):
        yield _stack([dataset[k] for k in range(i, min(i + batch_size, end))])
