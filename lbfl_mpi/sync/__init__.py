"""Client synchronisation schemes (BSP, FedAvg, post-local SGD), each composed with an exchange."""
import sys

from ..config import injects_noise, uses_micro_batches
from ..exchange import BucketedExchange, DenseExchange, Exchange, TopKExchange
from .base import Synchronizer, SyncResult
from .bsp import BSPSync
from .fedavg import FedAvgSync, PostLocalSync


def stats_slots(model, injects: bool = False) -> int:
    """Slots of the BSP statistics vector: one squared norm per trainable tensor, plus 1/b; with teacher
    v2's noise (``injects``) one more per tensor, its q_c,l (scaling/noise_inject.py)."""
    n = sum(1 for p in model.parameters() if p.requires_grad)
    return n + 1 + (n if injects else 0)


def overlap_off_reason(cfg, world_size: int) -> str | None:
    """Why ``sync.bucket_mb`` > 0 cannot overlap the gradient allreduce with backward here (None: it can)."""
    if world_size == 1:
        return "a single rank exchanges nothing"
    if cfg.sync.mode != "bsp":
        return f"sync.mode={cfg.sync.mode!r} averages models, not per-step gradients"
    if cfg.compress.method != "none":
        return f"compress.method={cfg.compress.method!r} selects entries over the whole gradient after backward"
    if uses_micro_batches(cfg, world_size):
        return (f"scaling.small_batch={cfg.scaling.small_batch} runs several backward passes per step "
                f"(micro-batches)")
    return None


def grad_exchange(cfg, comm, params: list, slots: int) -> Exchange:
    """BSP's gradient exchange: top-k when ``compress.method = "topk"``, bucketed and overlapped with
    backward when ``sync.bucket_mb`` > 0 and nothing rules it out (``overlap_off_reason``), else one
    buffer."""
    if cfg.compress.method == "topk":
        return TopKExchange(comm, params, cfg.compress, cfg.run.seed * 1_000_003 + comm.rank, extras=slots,
                            what="gradient")
    if cfg.sync.bucket_mb > 0 and overlap_off_reason(cfg, comm.world_size) is None:
        return BucketedExchange(comm, params, slots, cfg.sync.bucket_mb)
    return DenseExchange(comm, params, slots)


def model_exchange(cfg, comm, state: list) -> Exchange | None:
    """FedAvg's exchange of the model (parameters and float buffers): top-k compressed deltas when
    ``compress.method = "topk"``; None for the dense average every scheme already has."""
    if cfg.compress.method == "topk":
        return TopKExchange(comm, state, cfg.compress, cfg.run.seed * 1_000_003 + comm.rank + 7919,
                            what="model delta")
    return None


def build_sync(cfg, comm, model) -> Synchronizer:
    """The scheme named by ``sync.mode``, composed with the exchanges ``compress`` and ``sync.bucket_mb``
    ask for."""
    mode, period = cfg.sync.mode, cfg.sync.period
    params = [p for p in model.parameters() if p.requires_grad]
    state = params + [b for b in model.buffers() if b.is_floating_point()]
    # BSP sums per-layer local squared gradient norms and 1/b with the gradients (noise scale, gain)
    slots = stats_slots(model, injects_noise(cfg)) if comm.world_size > 1 else 0
    reason = overlap_off_reason(cfg, comm.world_size) if cfg.sync.bucket_mb > 0 else None
    if reason is not None and comm.rank == 0:
        print(f"lbfl: sync.bucket_mb={cfg.sync.bucket_mb:g} ignored, gradients are reduced in one buffer "
              f"after backward: {reason}", file=sys.stderr, flush=True)
    if mode == "bsp":
        return BSPSync(comm, model, grad_exchange(cfg, comm, params, slots))
    if mode == "fedavg":
        return FedAvgSync(comm, model, period, exchange=model_exchange(cfg, comm, state))
    if mode == "postlocal":
        switch = cfg.sync.switch_step
        return PostLocalSync(comm, model, period, switch,
                             bsp=BSPSync(comm, model, grad_exchange(cfg, comm, params, slots)),
                             local=FedAvgSync(comm, model, period, start_step=switch,
                                              exchange=model_exchange(cfg, comm, state)))
    raise ValueError(f"sync.mode={mode!r}")


__all__ = ["stats_slots", "overlap_off_reason", "grad_exchange", "model_exchange", "SyncResult", "Synchronizer",
           "BSPSync", "FedAvgSync", "PostLocalSync", "build_sync"]
