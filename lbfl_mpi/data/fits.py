"""Sizes checked before anything is allocated: a batch, or a synthetic dataset, that cannot fit in
memory, or a batch that would need an absurd number of passes over a client's partition, is refused
in one line at start-up (the callers raise DataError with the message: exit code 2), instead of a
loop of minutes or a traceback from the allocator. Imports nothing of the package.

* Memory: one local batch holds b samples of ``prod(input_shape)`` float32 values plus an int64
  label and an int64 index each; that alone must fit the memory of the device the batch lives on
  (the host's physical memory, capped by a cgroup limit, on CPU). Activations come on top, so this is
  a floor: ``lbfl plan`` measures the real requirement (Eq. 3).
* Passes: a client's batch is drawn from its own partition, reshuffled at each pass (loader.py), so
  a batch larger than the partition repeats samples. A batch of more than MAX_PASSES passes over its
  partition is surely a typo (2e9 on 64 samples would draw 31 million permutations per step).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

MAX_PASSES = 65536
_SAMPLE_EXTRA = 16  # int64 label + int64 index per sample


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def host_memory_bytes() -> int | None:
    """Physical memory of this host, or the cgroup (v2 or v1) memory limit when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(p).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def device_memory_bytes(device) -> int | None:
    """Memory of ``device``: a CUDA device's total, else the host's."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    return host_memory_bytes()


def batch_bytes(b: int, input_shape) -> int:
    """Bytes of one batch of ``b`` samples: float32 inputs plus the label and index of each."""
    return int(b) * (4 * math.prod(int(s) for s in input_shape) + _SAMPLE_EXTRA)


def batch_problem(what: str, b: int, input_shape, partition_size: int | None = None, device=None,
                  who: str = "the") -> str | None:
    """Why a batch of ``b`` cannot be drawn: it does not fit the device's memory, or it spans more than
    MAX_PASSES passes over a partition of ``partition_size``; None when it can. ``what`` names the
    batch in the message ("train.batch_size=64"), ``who`` the partition's owner ("rank 3's")."""
    if partition_size and b > MAX_PASSES * partition_size:
        return (f"{what} is {b // partition_size} passes over {who} partition of "
                f"{partition_size} samples in every batch (at most {MAX_PASSES}); lower the batch")
    limit = device_memory_bytes(device)
    need = batch_bytes(b, input_shape)
    if limit is not None and need > limit:
        where = "the GPU" if device is not None and getattr(device, "type", "") == "cuda" else "this host"
        return (f"{what} does not fit in memory: one batch of {list(input_shape)} inputs takes "
                f"{_gb(need)} before any activation, and {where} has {_gb(limit)}; lower the batch "
                "(`lbfl plan` reports the largest that fits)")
    return None


def synthetic_problem(classes: int, shape, train: int, test: int) -> str | None:
    """Why the synthetic set (class templates, training and test samples, float32) cannot be built:
    it does not fit in this host's memory; None when it fits."""
    limit = host_memory_bytes()
    per = 4 * math.prod(int(s) for s in shape)
    need = (int(classes) + int(train) + int(test)) * per + (int(train) + int(test)) * 8
    if limit is not None and need > limit:
        return (f"data.synthetic_classes={classes}, data.synthetic_train={train}, data.synthetic_test="
                f"{test} with data.synthetic_shape={list(shape)}: the synthetic set takes {_gb(need)}, "
                f"and this host has {_gb(limit)} of memory")
    return None
