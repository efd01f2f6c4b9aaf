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
