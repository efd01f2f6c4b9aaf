"""The micro-batch of gradient accumulation (``train.micro_batch``), chosen from the memory model of
Eq. 3 (Tyagi 2025) when it is -1 (auto).

Auto: fit Eq. 3 for this rank's model on its device (:func:`~lbfl_mpi.plan.memory.fit_memory`, on a
copy of the model, with the random state restored, so the run computes what it would without the
probe), invert it for the budget (``batching.memory_budget_gb``, else a GPU's total memory), and take
the largest divisor of the per-client batch that fits (equal micro-batches; under dynamic batching
the largest size that fits). A batch that fits whole needs no accumulation (0).
"""
from __future__ import annotations

import copy
import sys

import torch

from ..config import ConfigError


def largest_divisor_at_most(b: int, cap: int) -> int:
    """The largest d <= cap with b % d == 0 (1 when cap >= 1)."""
    return next(d for d in range(min(b, cap), 0, -1) if b % d == 0)


def budget_bytes(cfg, device) -> float:
    """batching.memory_budget_gb in bytes, or a CUDA device's total memory; refused on CPU without one."""
    if cfg.batching.memory_budget_gb > 0:
        return cfg.batching.memory_budget_gb * 1e9
    if torch.device(device).type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    raise ConfigError("train.micro_batch=-1: on CPU there is no device memory to size micro-batches by; set "
                      "batching.memory_budget_gb (or a train.micro_batch > 0)")


def micro_batch_of(cfg, model: torch.nn.Module, bundle, device, rank: int = 0) -> int:
    """The accumulation micro-batch for this rank: train.micro_batch, or the auto choice (module
    docstring, reported on stderr by every rank, since devices differ); 0 when the batch runs in one
    pass."""
    mb, b = cfg.train.micro_batch, cfg.train.batch_size
    if mb >= 0:
        return mb if 0 < mb < b else 0
    from .memory import fit_memory

    budget = budget_bytes(cfg, device)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    try:
        mm = fit_memory(copy.deepcopy(model), bundle.input_shape, bundle.num_classes, cfg.train.optimizer,
                        cfg.train.momentum, device, probe_batches=(1, 2, 4, 8))
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
    fit = mm.max_batch(budget)
    if fit < 1:
        raise ConfigError(f"train.micro_batch=-1: batching.memory_budget_gb={budget / 1e9:g} does not hold the "
                          f"model, its gradients and optimizer state ({mm.static / 1e9:.3g} GB) plus one sample "
                          f"(Eq. 3)")
    chosen = 0 if fit >= b else fit if cfg.batching.mode == "dynamic" else largest_divisor_at_most(b, fit)
    what = f"micro-batches of {chosen}" if chosen else "one pass (the whole batch fits)"
    print(f"lbfl: rank {rank}: train.micro_batch=-1: {what} for train.batch_size={b}; Eq. 3 fits {fit} samples "
          f"in {budget / 1e9:g} GB on {torch.device(device).type}", file=sys.stderr, flush=True)
    return chosen
