"""Client synchronisation schemes: BSP, FedAvg and post-local SGD."""
from .base import SyncResult, Synchronizer
from .bsp import BSPSync
from .fedavg import FedAvgSync, PostLocalSync


def build_sync(cfg, comm, model) -> Synchronizer:
    """The synchroniser named by ``sync.mode``."""
    mode = cfg.sync.mode
    if mode == "bsp":
        return BSPSync(comm, model)
    if mode == "fedavg":
        return FedAvgSync(comm, model, cfg.sync.period)
    if mode == "postlocal":
        return PostLocalSync(comm, model, cfg.sync.period, cfg.sync.switch_step)
    raise ValueError(f"sync.mode={mode!r}")


__all__ = ["SyncResult", "Synchronizer", "BSPSync", "FedAvgSync", "PostLocalSync", "build_sync"]
