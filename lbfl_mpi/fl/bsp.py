"""BSP with more clients than ranks (``fl.clients = N > 0``, ``sync.mode = "bsp"``).

Every step's gradient is that of all N clients' batches: each rank hosts a fixed share of the
clients (sampling.place_balanced over all N), draws each one's batch from its own partition, and
trains on their concatenation, so its mean gradient is sum_i b_i g_i / sum_i b_i over its clients;
BSP's exchange then weights the ranks by their sum of b_i (Eq. 1a with b_c = sum_i b_i), and the
result is the mean gradient of the N x train.batch_size samples: the global-batch gradient of a model
without BatchNorm (tested against a one-process reference). BatchNorm normalises over the rank's
concatenated batch.
"""
from __future__ import annotations

import torch


class ClientsLoader:
    """The rank's clients' loaders as one: each batch is the concatenation of one batch of each."""

    def __init__(self, loaders: list, clients: list[int]):
        self.loaders, self.clients = loaders, clients

    @property
    def batch_size(self) -> int:
        return sum(int(ld.batch_size) for ld in self.loaders)

    @batch_size.setter
    def batch_size(self, b: int) -> None:
        if int(b) != self.batch_size:
            raise ValueError(f"the batch of a rank hosting clients {self.clients} is fixed at {self.batch_size}")

    @property
    def samples_seen(self) -> int:
        return sum(ld.samples_seen for ld in self.loaders)

    @property
    def epoch(self) -> float:
        return self.samples_seen / sum(len(ld.indices) for ld in self.loaders)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(ld.next_batch() for ld in self.loaders))
        return torch.cat(xs), torch.cat(ys)

    def close(self) -> None:
        for ld in self.loaders:
            ld.close()

    def state_dict(self) -> dict:
        return {"clients": list(self.clients), "loaders": [ld.state_dict() for ld in self.loaders]}

    def load_state_dict(self, d: dict) -> None:
        if list(d.get("clients", [])) != list(self.clients):
            raise ValueError(f"the checkpoint's rank hosted clients {d.get('clients')}, this one {self.clients}")
        for ld, s in zip(self.loaders, d["loaders"]):
            ld.load_state_dict(s)
