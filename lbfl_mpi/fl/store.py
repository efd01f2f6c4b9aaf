"""The states of the clients a rank holds between the rounds they take part in.

A client's state is a dict of CPU tensors and small values (its optimizer state, loader position,
SCAFFOLD control variate). The store keeps states in memory up to ``fl.state_budget_mb`` and
spills the least recently used ones beyond it to ``clients/rankNNNN/client_NNNNNN.pt`` in the run
directory. The format is torch's own file: it holds tensors without conversion, is written
atomically (files.save_torch), and is read back with ``weights_only=True``, which unpickles no
code. A spilled state is read back, and its file removed, when the client trains again or moves
to another rank.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch

from ..files import open_regular, real_dir, save_torch


def state_bytes(state) -> int:
    """Bytes of the tensors in a (nested) state."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def to_cpu(state, copy: bool = True):
    """A (nested) state whose tensors live on the CPU (the store's and MPI's side): copies, or with
    ``copy=False`` the tensors themselves where they already are there (fresh ones nobody else holds)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=copy)
    if isinstance(state, dict):
        return {k: to_cpu(v, copy) for k, v in state.items()}
    if isinstance(state, list):
        return [to_cpu(v, copy) for v in state]
    if isinstance(state, tuple):
        return tuple(to_cpu(v, copy) for v in state)
    return state


class ClientStore:
    def __init__(self, budget_mb: float, spill_dir: Path | None):
        self.budget = int(budget_mb * 2 ** 20)
        self.spill_dir = spill_dir
        self.memory: OrderedDict[int, dict] = OrderedDict()  # least recently used first
        self.spilled: set[int] = set()
        self.bytes = 0
        self.spills = 0  # states written to disk so far (telemetry)

    def __contains__(self, cid: int) -> bool:
        return cid in self.memory or cid in self.spilled

    def ids(self) -> list[int]:
        return sorted({*self.memory, *self.spilled})

    def put(self, cid: int, state: dict, copy: bool = True) -> None:
        """Keep the client's state (copied, unless ``copy=False`` says its tensors are the caller's own
        fresh ones)."""
        self.pop(cid)
        state = to_cpu(state, copy)
        self.memory[cid] = state
        self.bytes += state_bytes(state)
        while self.spill_dir is not None and self.bytes > self.budget and self.memory:
            self._spill(next(iter(self.memory)))

    def pop(self, cid: int) -> dict | None:
        """The client's state, removed from the store (None: the client has none yet)."""
        if cid in self.memory:
            state = self.memory.pop(cid)
            self.bytes -= state_bytes(state)
            return state
        if cid in self.spilled:
            path = self._path(cid)
            with open_regular(path) as fh:
                state = torch.load(fh, map_location="cpu", weights_only=True)
            os.unlink(path)
            self.spilled.discard(cid)
            return state
        return None

    def get(self, cid: int) -> dict | None:
        """The client's state, left in the store."""
        state = self.pop(cid)
        if state is not None:
            self.put(cid, state, copy=False)
        return state

    def _path(self, cid: int) -> Path:
        return self.spill_dir / f"client_{cid:06d}.pt"

    def _spill(self, cid: int) -> None:
        state = self.memory.pop(cid)
        self.bytes -= state_bytes(state)
        real_dir(self.spill_dir)
        save_torch(state, self._path(cid))
        self.spilled.add(cid)
        self.spills += 1
