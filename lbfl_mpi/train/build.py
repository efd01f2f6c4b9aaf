"""Building a worker and its client from a config, before anything is written.

Everything that can fail on bad input (backend, dataset, partition, model, input shape) fails here;
nothing is written until the loop runs (loop.py), so a bad config or a missing dataset leaves no file
behind. The order of the random draws is part of the contract: same config and seed, same run.

Tests and benchmarks inject instead of patching: ``comm`` (any object with Comm's interface, e.g. a
Comm over a sub-communicator) and ``batches``, a ``(step, client) -> (x, y)`` source that replaces the
client's loader draw (record the real batches by calling ``client.loader.next_batch()`` inside it,
or return fixed ones).
"""
from __future__ import annotations

import sys

import torch

from ..batching.adaptive import AdaptiveBatcher
from ..batching.dynamic import DynamicBatcher
from ..config import Config, global_batch, uses_micro_batches
from ..data import ClientLoader, DataError, load_dataset, partition_indices
from ..data.datasets import eval_sets
from ..data.fits import batch_problem
from ..data.partition import partition_warnings
from ..exchange.link import build_link
from ..models import ModelError, build_model
from ..optim import build_optimizer
from ..plan.micro_batch import micro_batch_of
from ..precision import LossScaler
from ..run.stopping import StopAgreement, preemption_warnings
from ..scaling.gnp import GradNormPenalty
from ..scaling.transform import GradTransform, scaling_warnings
from ..sync import build_sync
from .client import Client
from .worker import Worker


def build_worker(cfg: Config, comm=None, batches=None, signals=None, device: str = "auto") -> Worker:
    """The rank's worker with its client. ``comm`` defaults to a Comm over MPI_COMM_WORLD; ``signals``
    is the SignalWatch of preemption signals (``lbfl train`` starts it before MPI); ``device`` "cpu"
    keeps the worker on the CPU also where a GPU exists (benchmarks), "auto" picks the rank's GPU."""
    comm, stops, device, backend = start_rank(cfg, comm, signals, device)
    seed = cfg.run.seed
    plan = None
    if cfg.batching.plan_at_start:  # before any seeding below: probes draw random batches
        from ..plan.recommend import plan_rank

        budget = cfg.batching.memory_budget_gb * 1e9 or None
        plan = plan_rank(cfg, comm, budget, list(cfg.batching.plan_probes), [], rounds=2, repeats=2)
    bundle = load_dataset(cfg.data, seed)
    n = cfg.fl.clients or comm.world_size  # fl.clients > 0 here: BSP over N clients (fl/bsp.py)
    parts = partition_indices(bundle.train_labels, n, cfg.data.partition, seed,
                              cfg.data.labels_per_client, cfg.data.alpha)
    loader = None
    if cfg.fl.clients:
        loader = _clients_loader(cfg, comm, device, bundle, parts)
    else:
        check_local_batch(cfg, comm, bundle.input_shape, len(parts[comm.rank]), device)
    client = _build_client(cfg, comm, device, bundle, parts[comm.rank] if loader is None else None, seed, loader)
    gb = global_batch(cfg, comm.world_size)
    kind = AdaptiveBatcher if cfg.batching.global_mode == "adaptive" else DynamicBatcher
    batcher = kind(cfg.batching, comm.world_size, gb) if cfg.batching.mode == "dynamic" else None
    worker = Worker(cfg, comm, device=device, backend=backend, stops=stops, plan=plan, test_set=bundle.test,
                    **eval_sets(bundle, cfg.train),
                    partition_sizes=[len(p) for p in parts], global_batch=gb, batcher=batcher,
                    clients=[client], batches=batches)
    for warning in start_warnings(cfg, comm.world_size, bundle, parts, batcher) if comm.rank == 0 else ():
        print(f"lbfl: warning: {warning}", file=sys.stderr, flush=True)
    return worker


def start_rank(cfg: Config, comm, signals, device: str):
    """The rank's communicator (a Comm over MPI_COMM_WORLD by default), stop agreement, device and
    data plane, started before anything that may fail on one rank only: choosing the backend is
    collective."""
    if comm is None:
        from ..comm.world import Comm

        comm = Comm()
    # nothing to agree on without signals to catch and without the non-finite guard
    stops = StopAgreement(comm, signals, enabled=bool(cfg.run.preempt_signals) or cfg.train.nonfinite != "ignore")
    device = comm.pick_device(device)
    backend = comm.start_backend(cfg.dist.backend, cfg.dist.timeout_s)
    comm.wait_poll_s = cfg.sync.wait_poll_us * 1e-6
    comm.link = build_link(cfg.hetero, comm.world_size)  # hetero.link_*: the emulated network (or None)
    return comm, stops, device, backend


def start_warnings(cfg: Config, world_size: int, bundle, parts, batcher) -> list[str]:
    """The one-line warnings rank 0 prints once before training: the scaling config, a split that
    leaves classes to no client or a client fewer samples than its batch, a preemption signal that
    cannot be honoured before the end."""
    sizes = batcher.sizes if batcher is not None else [cfg.train.batch_size] * len(parts)
    y = getattr(bundle.test, "y", None)  # TensorData; torchvision sets have targets, or neither (train labels)
    test_labels = y.cpu().numpy() if isinstance(y, torch.Tensor) else getattr(bundle.test, "targets", None)
    return [*scaling_warnings(cfg),
            *partition_warnings(parts, bundle.train_labels, bundle.num_classes, sizes, cfg.data.partition,
                                test_labels),
            *preemption_warnings(cfg, world_size)]


def check_local_batch(cfg: Config, comm, input_shape, partition_size: int, device) -> None:
    """Before any batch is drawn: this rank's largest possible batch (train.batch_size; with dynamic
    batching the most the allocation can give it) must fit its device and its partition (data/fits.py)."""
    b = cfg.train.batch_size
    what = f"train.batch_size={b}"
    if cfg.batching.mode == "dynamic":
        g = global_batch(cfg, comm.world_size)
        b = min(g - (comm.world_size - 1) * cfg.batching.min_batch, cfg.batching.max_batch or g)
        what = f"a dynamic batch of up to {b} (batching.global_batch={g})"
    problem = batch_problem(what, b, input_shape, partition_size, device, who=f"rank {comm.rank}'s")
    if problem:
        raise DataError(problem)


def _clients_loader(cfg: Config, comm, device, bundle, parts):
    """BSP over fl.clients: the rank's fixed share of the clients, their batches drawn together."""
    from ..fl.bsp import ClientsLoader
    from ..fl.sampling import client_partition_problem, place_balanced

    b = cfg.train.batch_size
    hosted = place_balanced(list(range(len(parts))), [len(p) for p in parts], comm.world_size)[comm.rank]
    problem = client_partition_problem(parts, b, cfg) or batch_problem(
        f"{len(hosted)} clients x train.batch_size={b}", b * len(hosted), bundle.input_shape,
        sum(len(parts[i]) for i in hosted), device, who=f"rank {comm.rank}'s")
    if problem:
        raise DataError(problem)
    return ClientsLoader([ClientLoader(bundle.train, parts[i], b, cfg.run.seed, i, cfg.data.workers, device=device)
                          for i in hosted], hosted)


def _build_client(cfg: Config, comm, device, bundle, indices, seed: int, loader=None) -> Client:
    # in-memory datasets live on the rank's device: batches are gathered there, no per-step copy
    if loader is None:
        loader = ClientLoader(bundle.train, indices, cfg.train.batch_size, seed, comm.rank, cfg.data.workers,
                              device=device)
    torch.manual_seed(seed)  # same init everywhere; rank 0's copy is broadcast anyway
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.norm,
                        cfg.model.ghost_batch, cfg.model.width).to(device)
    _probe(model, cfg, bundle.input_shape, device)
    model.train()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    scaler = LossScaler() if cfg.train.precision == "fp16" else None
    torch.manual_seed(seed * 1_000_003 + comm.rank + 1)  # independent dropout/augmentation per client
    sync = build_sync(cfg, comm, model)
    opt = build_optimizer(cfg.train, sync.params)
    micro = cfg.scaling.small_batch if uses_micro_batches(cfg, comm.world_size) else 0
    # accumulation feeds the noise scale where the free BSP estimate is missing (scaling/stats.py)
    small_stats = cfg.sync.mode != "bsp" or comm.world_size == 1
    transform = GradTransform(cfg, comm, sync.params, global_batch(cfg, comm.world_size), device)
    sc = cfg.scaling
    penalty = GradNormPenalty(model, sc.gnp_epsilon, sc.gnp_radius, lambda: opt.param_groups[0]["lr"]) \
        if sc.method == "gnp" else None
    return Client(comm.rank, model=model, opt=opt, scaler=scaler, loader=loader, sync=sync, transform=transform,
                  micro_batch=micro, precision=cfg.train.precision, channels_last=cfg.train.channels_last,
                  device=device, accumulate=micro_batch_of(cfg, model, bundle, device, comm.rank),
                  small_stats=small_stats, penalty=penalty)


def _probe(model: torch.nn.Module, cfg: Config, shape: tuple, device: torch.device) -> None:
    """One evaluation-mode forward pass of a single zero sample, so that a model that cannot take the
    dataset's input shape is refused before anything is written (no state changes in eval mode)."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"model.name={cfg.model.name!r} cannot run on data.name={cfg.data.name!r} "
                         f"inputs of shape {list(shape)}: {first}") from None
