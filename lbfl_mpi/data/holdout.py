"""A seeded training subset (``data.train_subset``) and a validation split (``data.val_fraction``).

Tuning a learning rate or a method on the test set and then reporting that test accuracy overstates
it; the validation split is what ``eval`` measures during training when it is set, and the test set is
then evaluated once, after the last step (train/components.py, Evaluator).

Steps, on the training set's labels y (length n), identical on every rank:
1. ``train_subset`` = N > 0 keeps N samples drawn uniformly without replacement (all n when 0);
2. ``val_fraction`` = f > 0 moves round(f * n_k) of the kept samples of each class k to the validation
   split (stratified: its class frequencies are those of the kept set, up to rounding);
3. the client partition (data.partition) is then made over what remains, so that no client ever
   trains on a validation sample.

Both draws use a fixed stream that never depends on ``run.seed``: every seed and every arm of a grid
trains and validates on the same samples, as the test split already does (datasets.py), so that
paired comparisons over seeds measure the method and the seed, not a different split. For example
``train_subset = 15000`` with ``val_fraction = 1/3`` gives about 10,000 training and 5,000 validation
samples (9,998 and 5,002 on Fashion-MNIST: each class rounds). A validation sample of an augmented
torchvision training set keeps the training transform.
"""
from __future__ import annotations

import numpy as np
import torch

_HOLDOUT_SEED = 7  # fixed, as datasets._SPLIT_SEED: the split must not move with the run seed


class HoldoutError(ValueError):
    """A subset or split that cannot be made (too few samples); one-line message."""


def holdout_indices(labels: np.ndarray, train_subset: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 indices into ``labels``: (training, validation), disjoint (steps 1-2)."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    n = len(labels)
    rng = np.random.default_rng([_HOLDOUT_SEED, 0])
    if train_subset > n:
        raise HoldoutError(f"data.train_subset={train_subset} exceeds the {n} training samples")
    kept = np.sort(rng.permutation(n)[:train_subset]) if train_subset else np.arange(n, dtype=np.int64)
    if not val_fraction:
        return kept, np.empty(0, np.int64)
    rng = np.random.default_rng([_HOLDOUT_SEED, 1])
    val = []
    for k in np.unique(labels[kept]):
        members = kept[labels[kept] == k]
        val.append(rng.permutation(members)[:int(round(val_fraction * len(members)))])
    val_idx = np.sort(np.concatenate(val).astype(np.int64))
    train_idx = np.setdiff1d(kept, val_idx, assume_unique=True)
    if not len(val_idx) or not len(train_idx):
        raise HoldoutError(f"data.val_fraction={val_fraction:g} of {len(kept)} samples leaves "
                           f"{len(train_idx)} for training and {len(val_idx)} for validation; both need samples")
    return train_idx, val_idx


def probe(dataset, count: int, key: str = "train.eval_train_samples"):
    """``train.eval_train_samples``: ``count`` samples of the training set drawn once from a fixed
    stream (the same for every seed and rank), the train side of the evaluation; None when 0.
    ``train.eval_bn_recompute`` reads the first ``count`` of the same stream (``key`` names the
    setting in the error)."""
    if not count:
        return None
    n = len(dataset)
    if count > n:
        raise HoldoutError(f"{key}={count} exceeds the {n} training samples")
    return take(dataset, np.sort(np.random.default_rng([_HOLDOUT_SEED, 2]).permutation(n)[:count]))


def take(dataset, idx: np.ndarray):
    """The samples ``idx`` of a dataset: a TensorData of them, or a torch Subset of a map-style set."""
    if hasattr(dataset, "x") and hasattr(dataset, "y"):
        t = torch.as_tensor(idx, dtype=torch.int64, device=dataset.x.device)
        return type(dataset)(dataset.x[t], dataset.y[t])
    from torch.utils.data import Subset

    return Subset(dataset, idx.tolist())
