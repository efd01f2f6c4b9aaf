"""Split training-sample indices among clients: iid, a fixed number of labels per client, or Dirichlet skew."""
from __future__ import annotations

import numpy as np

SCHEMES = ("iid", "labels", "dirichlet")


class PartitionError(ValueError):
    """A partition that cannot be built (bad scheme, empty client); one-line message."""


def partition_indices(labels: np.ndarray, world_size: int, scheme: str, seed: int,
                      labels_per_client: int = 1, alpha: float = 0.5) -> list[np.ndarray]:
    """Return one sorted int64 index array per client; every index belongs to at most one client."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if world_size < 1:
        raise PartitionError(f"world size must be >= 1, got {world_size}")
    if scheme not in SCHEMES:
        raise PartitionError(f"data.partition={scheme!r} is unknown (choices: {', '.join(SCHEMES)})")
    # A distinct stream per scheme so that switching scheme never reuses the same draws by accident.
    rng = np.random.default_rng([seed, SCHEMES.index(scheme)])
    if scheme == "iid":
        parts = np.array_split(rng.permutation(len(labels)), world_size)
        hint = "use fewer ranks or more training samples"
        desc = "data.partition='iid'"
    elif scheme == "labels":
        parts = _by_labels(labels, world_size, labels_per_client, rng)
        hint = "use fewer ranks or a larger data.labels_per_client"
        desc = f"data.partition='labels' with labels_per_client={labels_per_client}"
    else:
        if not alpha > 0:
            raise PartitionError(f"data.partition='dirichlet' needs data.alpha > 0, got {alpha}")
        parts = _dirichlet(labels, world_size, alpha, rng)
        hint = "raise data.alpha or use fewer ranks"
        desc = f"data.partition='dirichlet' with alpha={alpha:g}"
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    for c, p in enumerate(out):
        if len(p) == 0:
            raise PartitionError(f"{desc} leaves client {c} of {world_size} empty; {hint}")
    return out


def _by_labels(labels: np.ndarray, world_size: int, per_client: int,
               rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    k = len(classes)
    if not 1 <= per_client <= k:
        raise PartitionError(f"data.labels_per_client={per_client} must be between 1 and the "
                             f"number of classes ({k})")
    order = rng.permutation(classes)
    # Round-robin over a shuffled class order: consecutive clients take consecutive blocks, so every
    # class is held by someone once world_size * per_client >= k, and a client's classes are distinct.
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(world_size):
        for j in range(per_client):
            holders[int(order[(client * per_client + j) % k])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(world_size)]
    for c in classes:
        owners = holders[int(c)]
        if not owners:
            continue  # a class nobody holds is dropped
        idx = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(idx, len(owners))):
            parts[owner].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def _dirichlet(labels: np.ndarray, world_size: int, alpha: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(world_size)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(world_size, alpha))
        cuts = np.round(np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].append(chunk)
    return [np.concatenate(p) for p in parts]


def _listed(items, limit: int = 10) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def partition_warnings(parts: list[np.ndarray], labels: np.ndarray, num_classes: int, batch_sizes: list[int],
                       scheme: str, test_labels: np.ndarray | None = None) -> list[str]:
    """Start-up warnings about a split (one line each; the trainer prints them once, on rank 0):

    - classes that no client holds: no client ever trains on them, so test accuracy cannot exceed the
      share of test samples (``test_labels``; the training labels when not given) in the classes held;
    - clients holding fewer training samples than their batch (``batch_sizes[c]``): every batch of such
      a client repeats samples (the stream straddles passes over its partition, data/loader.py)."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    out = []
    held = np.unique(np.concatenate([labels[p] for p in parts])) if parts else np.empty(0, np.int64)
    unseen = sorted(set(range(num_classes)) - {int(c) for c in held})
    if unseen:
        ref = labels if test_labels is None else np.asarray(test_labels).astype(np.int64).reshape(-1)
        cap = float(np.isin(ref, held).mean()) if ref.size else 0.0
        where = "test" if test_labels is not None else "training"
        out.append(f"data.partition={scheme!r} on {len(parts)} client{'s' if len(parts) != 1 else ''} leaves "
                   f"{len(unseen)} of {num_classes} classes held by no client (classes {_listed(unseen)}): "
                   f"test accuracy is capped at {cap:.4f} (the share of {where} samples in the "
                   f"{num_classes - len(unseen)} classes held)")
    small = [(c, len(p), int(b)) for c, (p, b) in enumerate(zip(parts, batch_sizes)) if len(p) < b]
    if small:
        which = _listed(f"client {c}: {n} < {b}" for c, n, b in small)
        out.append(f"data.partition={scheme!r} leaves {len(small)} client{'s' if len(small) != 1 else ''} with "
                   f"fewer training samples than a batch (samples < batch: {which}): every batch of such a client "
                   "repeats samples")
    return out
