"""Client synchronisation schemes: BSP, FedAvg and post-local SGD."""
from .base import SyncResult, Synchronizer
from .bsp import BSPSync
from .fedavg import FedAvgSync, PostLocalSync
from .sparse import SparseBSPSync, SparseFedAvgSync


def build_sync(cfg, comm, model) -> Synchronizer:
    """The synchroniser named by ``sync.mode``, compressed when ``compress.method = "topk"``."""
    mode, s, c = cfg.sync.mode, cfg.sync, cfg.compress
    topk = c.method == "topk"

    def bsp():
        return SparseBSPSync(comm, model, c, cfg.run.seed) if topk else BSPSync(comm, model)

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


__all__ = ["SyncResult", "Synchronizer", "BSPSync", "FedAvgSync", "PostLocalSync", "SparseBSPSync",
           "SparseFedAvgSync", "build_sync"]
