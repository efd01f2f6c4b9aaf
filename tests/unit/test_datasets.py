"""Dataset loaders on embedded, generated and missing data."""
import gzip
import struct

import numpy as np
import pytest
import torch

from lbfl_mpi.config import DataConfig
from lbfl_mpi.data import DataError, TensorData, load_dataset, read_idx


def test_digits_shapes_and_normalisation():
    b = load_dataset(DataConfig(name="digits"))
    assert isinstance(b.train, TensorData) and isinstance(b.test, TensorData)
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert len(b.train) + len(b.test) == 1797 and 355 <= len(b.test) <= 365
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert abs(float(b.train.x.mean())) < 1e-4 and abs(float(b.train.x.std()) - 1) < 1e-2
    assert np.array_equal(b.train_labels, b.train.y.numpy())
    assert set(np.bincount(b.test.y.numpy())) <= {35, 36, 37}  # stratified


def _raw_rows(x_train, x):
    """Undo the shared affine normalisation: raw pixels 0 and 16 both occur in the train set."""
    lo, hi = float(x_train.min()), float(x_train.max())
    raw = np.rint((x.double().numpy() - lo) / (hi - lo) * 16).astype(np.uint8)
    return [r.tobytes() for r in raw.reshape(len(raw), -1)]


def test_digits_split_fixed_and_disjoint():
    a, b = load_dataset(DataConfig(name="digits"), seed=0), load_dataset(DataConfig(name="digits"), seed=99)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    from sklearn.datasets import load_digits
    raw = load_digits()
    where = {r.astype(np.uint8).tobytes(): i for i, r in enumerate(raw.images.reshape(len(raw.images), -1))}
    tr = [where[r] for r in _raw_rows(a.train.x, a.train.x)]  # KeyError if a row was mangled
    te = [where[r] for r in _raw_rows(a.train.x, a.test.x)]
    assert not set(tr) & set(te)
    assert sorted(tr + te) == list(range(len(raw.images)))
    assert np.array_equal(raw.target[te], a.test.y.numpy())
    assert np.array_equal(raw.target[tr], a.train_labels)


def _synth_cfg(**kw):
    base = dict(name="synthetic", synthetic_shape=[2, 6, 6], synthetic_classes=5,
                synthetic_train=600, synthetic_test=300, synthetic_noise=1.0)
    base.update(kw)
    return DataConfig(**base)


def test_synthetic_deterministic_and_seed_independent():
    a, b = load_dataset(_synth_cfg(), seed=0), load_dataset(_synth_cfg(), seed=5)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.shape == (600, 2, 6, 6) and a.train.x.dtype == torch.float32
    assert a.test.y.dtype == torch.int64 and a.input_shape == (2, 6, 6) and a.num_classes == 5
    assert np.bincount(a.train_labels).tolist() == [120] * 5
    assert not torch.equal(a.train.x[:300], a.test.x)


def test_synthetic_learnable_by_class_means():
    b = load_dataset(_synth_cfg())
    xtr, ytr = b.train.x.flatten(1), b.train.y
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(5)])
    pred = torch.cdist(b.test.x.flatten(1), means).argmin(1)
    assert (pred == b.test.y).float().mean() > 0.9  # chance is 0.2


def _write_idx(path, arr, magic, compress=True):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx(tmp_path, compress):
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    xte, yte = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    sfx = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", xtr, 0x803, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", ytr, 0x801, compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", xte, 0x803, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", yte, 0x801, compress)
    b = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert b.input_shape == (1, 28, 28) and len(b.train) == 12 and len(b.test) == 5
    assert np.array_equal(b.train_labels, ytr) and np.array_equal(b.test.y.numpy(), yte)
    s = xtr / 255.0
    ref = (xte / 255.0 - s.mean()) / s.std()
    np.testing.assert_allclose(b.test.x[:, 0].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "x.gz"
    _write_idx(p, np.zeros((3, 2, 2)), 0x803)
    assert read_idx(p, 0x803).shape == (3, 2, 2)
    with pytest.raises(DataError, match="magic"):
        read_idx(p, 0x801)


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    msg = str(e.value)
    assert "\n" not in msg and f"data.root={str(tmp_path)!r}" in msg
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert f in msg


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    msg = str(e.value)
    assert msg == (f"data.root={str(tmp_path)!r}: CIFAR-10 not found; expected "
                   f"{tmp_path}/cifar-10-batches-py/ (the python version of the dataset, extracted); "
                   f"stage it with: lbfl data fetch cifar10 --root {tmp_path}")


@pytest.mark.parametrize("name,needle", [("cifar100", "cifar-100-python/"),
                                         ("caltech101", "caltech101/101_ObjectCategories/"),
                                         ("caltech256", "caltech256/256_ObjectCategories/"),
                                         ("food101", "food-101/meta/")])
def test_other_torchvision_missing(tmp_path, name, needle):
    with pytest.raises(DataError, match="not found") as e:
        load_dataset(DataConfig(name=name, root=str(tmp_path)))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing created under root


def test_cifar10_corrupt_dir_is_data_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_empty_root_and_unknown_name():
    with pytest.raises(DataError, match="data.root must be set"):
        load_dataset(DataConfig(name="cifar10", root=""))
    with pytest.raises(DataError, match="choices: digits"):
        load_dataset(DataConfig(name="mnist"))


def test_caltech101_fake_tree(tmp_path):
    from PIL import Image
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for c, mode in (("BACKGROUND_Google", "RGB"), ("ant", "L"), ("bee", "RGB")):
        (cats / c).mkdir(parents=True)
        for i in range(1, 6):
            Image.new(mode, (20, 14), 40 * i if mode == "L" else (40 * i, 0, 0)).save(
                cats / c / f"image_{i:04d}.jpg")
    cfg = DataConfig(name="caltech101", root=str(tmp_path), image_size=16)
    b = load_dataset(cfg)
    assert b.input_shape == (3, 16, 16) and b.num_classes == 101
    assert len(b.train) == 8 and len(b.test) == 2
    assert sorted(b.train_labels.tolist() + [b.test[i][1] for i in range(2)]) == [0] * 5 + [1] * 5
    assert set(b.train.indices).isdisjoint(b.test.indices)
    for ds in (b.train, b.test):
        x, y = ds[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert [b.train[i][1] for i in range(8)] == b.train_labels.tolist()
    assert load_dataset(cfg, seed=7).test.indices == b.test.indices


def test_fashion_default_root_named_in_error(monkeypatch, tmp_path):
    import lbfl_mpi.data.datasets as dmod
    monkeypatch.setattr(dmod, "FASHION_DEFAULT_ROOT", str(tmp_path))
    with pytest.raises(DataError, match=r"data.root='' \(default .*\): Fashion-MNIST not found"):
        load_dataset(DataConfig(name="fashion_mnist"))


def test_fashion_default_root_hint_names_a_root_the_user_can_write(monkeypatch, tmp_path):
    """The system default root is not the user's to fill: the hint stages in $XDG_CACHE_HOME/lbfl_mpi
    (~/.cache/lbfl_mpi) and sets data.root there; an explicit data.root keeps its own hint."""
    import lbfl_mpi.data.datasets as dmod
    monkeypatch.setattr(dmod, "FASHION_DEFAULT_ROOT", str(tmp_path / "system"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mine = tmp_path / "cache" / "lbfl_mpi" / "fashion_mnist"
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="fashion_mnist"))
    assert str(e.value).endswith(f"; install Debian's dataset-fashion-mnist package (as root), or stage it where "
                                 f"you can write with: lbfl data fetch fashion_mnist --root {mine} and train with "
                                 f"--set data.root={mine}")
    assert str(tmp_path / "system") not in str(e.value).split("; install", 1)[1]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=f"--root {tmp_path}/home/.cache/lbfl_mpi/fashion_mnist and"):
        load_dataset(DataConfig(name="fashion_mnist"))


def _fake_cifar10(root, n_train=6, n_test=7):
    """cifar-10-batches-py with random images; torchvision's md5 checks are patched out by the caller."""
    import pickle
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(3)
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        (d / name).write_bytes(pickle.dumps(entry))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar_test_set_is_tensor_data_equal_to_per_image_transform(tmp_path, monkeypatch):
    """The CIFAR test set, converted to TensorData at load, against torchvision's per-image
    ToTensor + Normalize (the reference): equal bit for bit. The training set keeps its random
    augmentation and stays per-image; a resized test set stays per-image too."""
    tv = pytest.importorskip("torchvision")
    import torchvision.datasets.cifar as tvc
    from torchvision import transforms as T
    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)
    _fake_cifar10(tmp_path)
    b = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert isinstance(b.test, TensorData) and not isinstance(b.train, TensorData)
    assert len(b.train) == 30 and len(b.test) == 7 and b.input_shape == (3, 32, 32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ref = tv.datasets.CIFAR10(str(tmp_path), train=False, download=False,
                              transform=T.Compose([T.ToTensor(), T.Normalize(mean, std)]))
    want_x = torch.stack([ref[i][0] for i in range(len(ref))])
    want_y = torch.tensor([ref[i][1] for i in range(len(ref))], dtype=torch.int64)
    assert b.test.x.dtype == torch.float32 and b.test.x.shape == (7, 3, 32, 32)
    torch.testing.assert_close(b.test.x, want_x, rtol=0, atol=0)
    torch.testing.assert_close(b.test.y, want_y, rtol=0, atol=0)
    resized = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), image_size=40))
    assert not isinstance(resized.test, TensorData) and resized.test[0][0].shape == (3, 40, 40)


def test_digits_equal_scikit_learns_load_digits_and_split_bit_for_bit():
    """The stored split and the direct CSV read reproduce load_digits + train_test_split exactly."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float64) / 16.0)[:, None, :, :]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    mean, std = float(xtr.mean()), float(xtr.std())
    b = load_dataset(DataConfig(name="digits"))
    assert torch.equal(b.train.x, torch.from_numpy(((xtr - mean) / std).astype(np.float32)))
    assert torch.equal(b.test.x, torch.from_numpy(((xte - mean) / std).astype(np.float32)))
    np.testing.assert_array_equal(b.train_labels, ytr)
    np.testing.assert_array_equal(b.test.y.numpy(), yte)
