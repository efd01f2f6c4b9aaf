"""Building a worker for the federated layer (``fl.clients > 0``) before anything is written.

As train/build.py, but the partition is made over the N clients (identically on every rank from the
seed), every rank has a loader per client (an index list and a stream position: no data is copied),
and the worker's one client is a *slot*: one model and optimizer into which each client placed on
the rank is swapped for its local steps (rounds.py). The slot's synchroniser never communicates;
the round's exchange is the federation's.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import Config, ConfigError
from ..data import ClientLoader, DataError, load_dataset, partition_indices
from ..data.datasets import eval_sets
from ..data.fits import batch_problem
from ..models import build_model
from ..optim import build_optimizer
from ..plan.micro_batch import micro_batch_of
from ..precision import LossScaler
from ..scaling.transform import GradTransform
from ..sync.base import Synchronizer
from ..telemetry import FL_GROUPS
from ..train.build import _probe, start_rank, start_warnings
from ..train.client import Client
from ..train.worker import Worker
from .rounds import Federation
from .sampling import client_partition_problem


class LocalSync(Synchronizer):
    """A client's synchroniser inside a round: nothing is exchanged per step, and every rank holds the
    global model whenever it is evaluated, so evaluation needs no average."""

    name = "federated"

    def needs_average_for_eval(self) -> bool:
        return False


class FederatedWorker(Worker):
    """A worker whose client slot trains the clients placed on this rank, round by round."""

    federation: Federation
    log_groups = FL_GROUPS  # the rank file's ``clients`` and ``rounds`` groups

    def samples_seen(self) -> int:
        return self.federation.samples

    def data_plane_attrs(self) -> dict:
        fl = self.cfg.fl
        return {**super().data_plane_attrs(), "exchange": "federated", "fl_clients": fl.clients,
                "fl_clients_per_round": fl.clients_per_round or fl.clients, "fl_algorithm": fl.algorithm,
                "fl_server_optimizer": fl.server_optimizer}


def build_federated_worker(cfg: Config, comm=None, batches=None, signals=None, device: str = "auto"):
    comm, stops, device, backend = start_rank(cfg, comm, signals, device)
    seed, b, n = cfg.run.seed, cfg.train.batch_size, cfg.fl.clients
    bundle = load_dataset(cfg.data, seed)
    parts = partition_indices(bundle.train_labels, n, cfg.data.partition, seed, cfg.data.labels_per_client,
                              cfg.data.alpha)
    problem = client_partition_problem(parts, b, cfg) or batch_problem(
        f"train.batch_size={b}", b, bundle.input_shape, max(len(p) for p in parts), device, who="a client's")
    if problem:
        raise DataError(problem)
    loaders = {cid: ClientLoader(bundle.train, parts[cid], b, seed, cid, cfg.data.workers, device=device)
               for cid in range(n)}
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.norm,
                        cfg.model.ghost_batch, cfg.model.width).to(device)
    _probe(model, cfg, bundle.input_shape, device)
    if cfg.fl.bn == "local" and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"fl.bn='local': model.name={cfg.model.name!r} with model.norm={cfg.model.norm!r} has no "
                          "BatchNorm layer (use bncnn, or model.norm='batch')")
    model.train()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sync = LocalSync(comm, model)
    opt = build_optimizer(cfg.train, sync.params)
    transform = GradTransform(cfg, comm, sync.params, b, device)
    slot = Client(-1, model=model, opt=opt, scaler=LossScaler() if cfg.train.precision == "fp16" else None,
                  loader=loaders[0], sync=sync, transform=transform, micro_batch=0, precision=cfg.train.precision,
                  channels_last=cfg.train.channels_last, device=device,
                  accumulate=micro_batch_of(cfg, model, bundle, device, comm.rank))
    sizes = [len(p) for p in parts]
    w = FederatedWorker(cfg, comm, device=device, backend=backend, stops=stops, plan=None, test_set=bundle.test,
                        **eval_sets(bundle, cfg.train),
                        partition_sizes=sizes, global_batch=b * (cfg.fl.clients_per_round or n), batcher=None,
                        clients=[slot], batches=batches)
    w.federation = Federation(w, loaders, sizes, Path(cfg.run.out_dir) / "clients" / f"rank{comm.rank:04d}")
    if comm.rank == 0:
        for warning in start_warnings(cfg, n, bundle, parts, None):
            print(f"lbfl: warning: {warning}", file=sys.stderr, flush=True)
    return w
