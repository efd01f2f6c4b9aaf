"""The rank's process-wide part of training.

A :class:`Worker` owns what one rank has once, whatever the number of clients it hosts: the
communicator and the data plane it started, the device, the stop agreement (signals, non-finite
values; run/stopping.py), the test set and the evaluation of the global model, dynamic batching across
ranks, the emulated slowdown, and the batch source (``batches``, injectable). The rank file is
opened by the loop (loop.py). Today a worker hosts one client (client.py): ``clients[0]``.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import eval_batches
from ..files import save_torch
from ..precision import autocast
from ..scaling.sharpness import model_sharpness
from .bn_recompute import batch_norms, recomputed_statistics


def loader_batch(step: int, client):
    """The default batch source: the client's next batch from its own partition."""
    return client.loader.next_batch()


class Worker:
    def __init__(self, cfg, comm, *, device, backend: str, stops, plan, test_set, partition_sizes: list[int],
                 global_batch: int, batcher, clients: list, batches=None, val_set=None, probe_set=None,
                 bn_set=None):
        self.cfg, self.comm, self.device, self.backend = cfg, comm, device, backend
        self.stops, self.plan, self.test_set, self.val_set = stops, plan, test_set, val_set
        self.probe_set = probe_set  # train.eval_train_samples of the training set, or None
        self.bn_set = bn_set  # train.eval_bn_recompute samples of the training set, or None
        self.partition_sizes, self.global_batch, self.batcher = partition_sizes, global_batch, batcher
        self.clients = clients
        self.batches = batches or loader_batch  # (step, client) -> (x, y), on the host or the device
        self.slowdown = float(cfg.hetero.slowdown[comm.rank]) if cfg.hetero.slowdown else 1.0
        # the statistics of the noise scale travel with BSP's gradients when there is more than one rank
        self.exchanges_stats = comm.world_size > 1 and cfg.sync.mode in ("bsp", "postlocal")
        cc = cfg.compress  # the top-k density changes between steps (compress/density.py)
        self.varies_density = cc.method == "topk" and (cc.density_mode == "adaptive" or cc.density_batch_ref > 0)
        self.start_step = 0
        self.elapsed = 0.0  # wall seconds of earlier segments of a resumed run
        if batcher is not None:
            self.set_batch_sizes(batcher.sizes)
        if bn_set is not None and not batch_norms(self.client.model):
            from ..config import ConfigError

            raise ConfigError(f"train.eval_bn_recompute={cfg.train.eval_bn_recompute}: model.name="
                              f"{cfg.model.name!r} with model.norm={cfg.model.norm!r} has no BatchNorm statistics")

    @property
    def client(self):
        """The one client this worker hosts today."""
        return self.clients[0]

    def samples_seen(self) -> int:
        """Training samples this rank's clients processed."""
        return self.client.loader.samples_seen

    def set_batch_sizes(self, sizes: list[int]) -> None:
        """Every rank's batch (dynamic batching, the plan's limits, a restored allocation): the one place
        that sets a loader's batch size, and with it the global batch sum_c b_c where it adapts."""
        self.client.loader.batch_size = sizes[self.comm.rank]
        if self.batcher is not None and self.batcher.adaptive:
            self.global_batch = self.client.transform.global_batch = int(sum(sizes))

    def evaluate(self, data=None) -> tuple[float, float]:
        """Loss and accuracy of the global (sample-weighted average) model on ``data`` (the test set
        by default); collective."""
        return self.evaluate_many([self.test_set if data is None else data])[0]

    @torch.no_grad()
    def evaluate_many(self, sets: list) -> list[tuple[float, float]]:
        """(loss, accuracy) of the global model on each dataset of ``sets``, in one global view: the
        model average (and train.eval_bn_recompute's statistics) is formed once for all of them;
        collective."""
        c, cfg = self.client, self.cfg
        out = []
        with c.sync.global_view(c.sync.eval_weight(cfg.train.batch_size)), self._statistics():
            c.model.eval()
            for data in sets:
                acc = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
                for x, y in eval_batches(data, self.comm.rank, self.comm.world_size, cfg.train.eval_batch,
                                         cfg.data.workers, device=self.device):
                    x, y = c.to_device(x, y)
                    with autocast(c.precision, self.device):
                        logits = c.model(x).float()
                    acc[0] += F.cross_entropy(logits, y, reduction="sum").double()
                    acc[1] += (logits.argmax(1) == y).sum().double()
                    acc[2] += y.numel()
                self.comm.allreduce_(acc)
                out.append((float(acc[0] / acc[2]), float(acc[1] / acc[2])))
            c.model.train()
        return out

    def _statistics(self):
        """train.eval_bn_recompute: the global model's BatchNorm statistics recomputed from pooled
        training samples for the evaluation (train/bn_recompute.py); otherwise nothing changes."""
        if self.bn_set is None:
            return nullcontext()
        c = self.client
        return recomputed_statistics(c.model, self.bn_set, self.cfg.train.eval_batch, self.device, c.to_device,
                                     c.precision)

    def sharpness(self, iters: int) -> float:
        """Top Hessian eigenvalue of the global model's loss on the probe's first train.eval_batch
        samples (scaling/sharpness.py); the same batch and model on every rank, no collective."""
        c = self.client
        x, y = next(eval_batches(self.probe_set, 0, 1, self.cfg.train.eval_batch, device=self.device))
        with c.sync.global_view(c.sync.eval_weight(self.cfg.train.batch_size)):
            return model_sharpness(c.model, *c.to_device(x, y), iters)

    def save_global_model(self) -> None:
        """Rank 0 writes the final global (averaged) model's state_dict to ``model.pt``; collective."""
        c = self.client
        with c.sync.global_view(c.sync.eval_weight(self.cfg.train.batch_size)):
            if self.comm.rank == 0:
                save_torch(c.model.state_dict(), Path(self.cfg.run.out_dir) / "model.pt")

    def data_plane_attrs(self) -> dict:
        """Rank-file attributes: how this run's tensors travelled."""
        sync = self.client.sync
        ex = getattr(sync, "exchange", None)
        return {"dense_bytes": sync.dense_bytes, "backend": self.backend,
                "staging": self.comm.staging(self.device), "exchange": sync.exchange_name,
                "buckets": int(getattr(ex, "n_buckets", 1)), "precision": self.client.precision,
                "channels_last": int(self.cfg.train.channels_last)}

    def close(self) -> None:
        for c in self.clients:
            c.close()
