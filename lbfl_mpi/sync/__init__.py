"""Client synchronisation schemes: BSP, FedAvg and post-local SGD."""
from .base import SyncResult, Synchronizer
from .bsp import BSPSync
from .fedavg import FedAvgSync, PostLocalSync
from .sparse import SparseBSPSync, SparseFedAvgSync


def stats_slots(model) -> int:
    """Slots of the BSP statistics vector: one squared norm per trainable tensor, plus 1/b."""
    return sum(1 for p in model.parameters() if p.requires_grad) + 1


def build_sync(cfg, comm, model) -> Synchronizer:
    """The synchroniser named by ``sync.mode``, compressed when ``compress.method = "topk"``."""
    mode, s, c = cfg.sync.mode, cfg.sync, cfg.compress
    topk = c.method == "topk"
    # BSP sums per-layer local squared gradient norms and 1/b with the gradients (noise scale, gain)
    slots = stats_slots(model) if comm.world_size > 1 else 0

    def bsp():
        return SparseBSPSync(comm, model, c, cfg.run.seed, slots) if topk else BSPSync(comm, model, slots)

    def fedavg(start=0):
        if topk:
            return SparseFedAvgSync(comm, model, s.period, c, cfg.run.seed, start_step=start)
        return FedAvgSync(comm, model, s.period, start_step=start)

    if mode == "bsp":
        return bsp()
    if mode == "fedavg":
        return fedavg()
    if mode == "postlocal":
        return PostLocalSync(comm, model, s.period, s.switch_step, bsp=bsp(), local=fedavg(s.switch_step))
    raise ValueError(f"sync.mode={mode!r}")


__all__ = ["stats_slots", "SyncResult", "Synchronizer", "BSPSync", "FedAvgSync", "PostLocalSync", "SparseBSPSync",
           "SparseFedAvgSync", "build_sync"]
