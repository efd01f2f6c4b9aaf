"""Partition invariants for every scheme."""
import numpy as np
import pytest

from lbfl_mpi.data import PartitionError, partition_indices


def _digits_labels():
    from sklearn.datasets import load_digits
    return load_digits().target.astype(np.int64)


LABELS = np.repeat(np.arange(10), 50)[np.random.default_rng(7).permutation(500)]


def _check_disjoint(parts, n):
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "an index went to two clients"
    assert allidx.min() >= 0 and allidx.max() < n
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "client indices are sorted"


@pytest.mark.parametrize("scheme,kw", [("iid", {}), ("labels", {"labels_per_client": 2}),
                                       ("dirichlet", {"alpha": 0.5})])
@pytest.mark.parametrize("world", [1, 3, 10])
def test_invariants_and_determinism(scheme, kw, world):
    parts = partition_indices(LABELS, world, scheme, seed=3, **kw)
    assert len(parts) == world
    _check_disjoint(parts, len(LABELS))
    again = partition_indices(LABELS, world, scheme, seed=3, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if world > 1:
        other = partition_indices(LABELS, world, scheme, seed=4, **kw)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_near_equal_and_complete():
    parts = partition_indices(LABELS, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


@pytest.mark.parametrize("world,per", [(4, 1), (5, 2), (10, 3), (3, 4), (20, 1)])
def test_labels_exact_class_count(world, per):
    parts = partition_indices(LABELS, world, "labels", seed=1, labels_per_client=per)
    for p in parts:
        assert len(np.unique(LABELS[p])) == per
    held = np.unique(np.concatenate([LABELS[p] for p in parts]))
    if world * per >= 10:
        assert len(held) == 10
        # every sample of a held class is assigned, split evenly among its holders
        assert len(np.concatenate(parts)) == len(LABELS)


def test_labels_even_split_within_class():
    parts = partition_indices(LABELS, 20, "labels", seed=2, labels_per_client=1)
    assert sorted(len(p) for p in parts) == [25] * 20


def test_labels_uncovered_classes_dropped():
    parts = partition_indices(LABELS, 3, "labels", seed=0, labels_per_client=2)
    held = np.unique(np.concatenate([LABELS[p] for p in parts]))
    assert len(held) == 6
    assert len(np.concatenate(parts)) == int(np.isin(LABELS, held).sum())


def test_ten_clients_one_label_on_digits_gives_whole_classes():
    y = _digits_labels()
    parts = partition_indices(y, 10, "labels", seed=0, labels_per_client=1)
    got = sorted(int(np.unique(y[p])[0]) for p in parts)
    assert got == list(range(10))
    for p in parts:
        c = y[p[0]]
        assert np.array_equal(p, np.flatnonzero(y == c))


def test_dirichlet_small_alpha_is_skewed():
    def mean_max_share(alpha):
        shares = []
        for s in range(20):
            try:
                parts = partition_indices(LABELS, 5, "dirichlet", seed=s, alpha=alpha)
            except PartitionError:
                continue
            for p in parts:
                shares.append(np.bincount(LABELS[p], minlength=10).max() / len(p))
        return np.mean(shares)

    assert mean_max_share(0.1) > 0.5
    assert mean_max_share(100.0) < 0.25


def test_dirichlet_covers_everything():
    parts = partition_indices(LABELS, 4, "dirichlet", seed=5, alpha=1.0)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


def test_empty_client_error():
    with pytest.raises(PartitionError, match=r"dirichlet.*alpha=0\.001 leaves client \d+ of 50 empty; raise"):
        partition_indices(LABELS, 50, "dirichlet", seed=0, alpha=0.001)
    with pytest.raises(PartitionError, match=r"iid.*client 4 of 5 empty"):
        partition_indices(np.arange(4), 5, "iid", seed=0)


def test_bad_scheme_and_args():
    with pytest.raises(PartitionError, match="unknown"):
        partition_indices(LABELS, 2, "shards", seed=0)
    with pytest.raises(PartitionError, match="labels_per_client"):
        partition_indices(LABELS, 2, "labels", seed=0, labels_per_client=11)
    with pytest.raises(PartitionError, match="alpha"):
        partition_indices(LABELS, 2, "dirichlet", seed=0, alpha=0.0)
