"""t_mov of Eq. 2 through the trainer's own data path, for ``lbfl plan``.

The trainer's data phase (``t_data`` in the rank file, the paper's t_mov) is: ``ClientLoader.next_batch()``
over this rank's partition (``data.workers`` DataLoader processes for image-file datasets; an index
gather from the device-resident copy for in-memory ones), then the host-to-device copy of the batch
(``non_blocking``, ``channels_last`` when ``train.channels_last``), ended by a CUDA synchronise.
:class:`LoaderFeed` does exactly that, so a plan's t_mov is what a training step would spend there
at that batch size, including decoding, augmentation and collation of real samples; a tensor copy
of random numbers would see none of it.

The feed is timed inside the plan's training steps (compute runs between two batches, as in
training), so DataLoader workers prefetch as they would in a run. A change of batch size restarts
the workers (``ClientLoader`` does so too when dynamic batching changes b); the warm-up step of each
timed group absorbs that start.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import ClientLoader, partition_indices

__all__ = ["LoaderFeed", "loader_feed"]


class LoaderFeed:
    """``feed(b) -> (x, y)`` on ``device``: the next batch of ``b`` samples of this rank's stream, moved
    as the trainer moves it (the caller times the call)."""

    def __init__(self, dataset, indices: np.ndarray, seed: int, rank: int, workers: int, device,
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.loader = ClientLoader(dataset, indices, 1, seed, rank, workers, device=self.device)
        self.channels_last = bool(channels_last)

    def __call__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loader.batch_size = int(b)
        x, y = self.loader.next_batch()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the loader's worker processes, if any."""
        self.loader.close()


def loader_feed(cfg, bundle, rank: int, world_size: int, device) -> LoaderFeed:
    """The feed of rank ``rank``: its partition of ``bundle.train`` as the trainer computes it
    (``data.partition`` and its parameters, ``run.seed``), ``data.workers`` and ``train.channels_last``."""
    parts = partition_indices(bundle.train_labels, world_size, cfg.data.partition, cfg.run.seed,
                              cfg.data.labels_per_client, cfg.data.alpha)
    return LoaderFeed(bundle.train, parts[rank], cfg.run.seed, rank, cfg.data.workers, device,
                      cfg.train.channels_last)
