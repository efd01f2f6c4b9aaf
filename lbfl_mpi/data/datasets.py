"""Dataset loading: embedded digits, Fashion-MNIST IDX files, synthetic templates, torchvision image sets.

Nothing is ever downloaded here; a missing dataset raises :class:`DataError` naming ``data.root``, the
layout expected and the ``lbfl data fetch`` command that stages it (:mod:`lbfl_mpi.data.staging`).
Test splits never depend on the run seed, so accuracies of different runs compare.
"""
from __future__ import annotations

import gzip
import os
import shlex
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import NUM_CLASSES, DataConfig
from ..config.schema import FASHION_DEFAULT_ROOT
from ..files import open_regular
from .fits import synthetic_problem
from .holdout import HoldoutError, holdout_indices, probe, take

DATASET_NAMES = ("digits", "fashion_mnist", "synthetic", "cifar10", "cifar100",
                 "caltech101", "caltech256", "food101")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_SPLIT_SEED = 0          # fixed: train/test splits must not move with the run seed
_SYNTHETIC_SEED = 12345  # fixed: the synthetic task is the same for every run

_CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# (display name, layout expected under data.root, path whose existence means "present")
_LAYOUT = {
    "cifar10": ("CIFAR-10", "{r}/cifar-10-batches-py/ (the python version of the dataset, extracted)",
                "cifar-10-batches-py"),
    "cifar100": ("CIFAR-100", "{r}/cifar-100-python/ (the python version of the dataset, extracted)",
                 "cifar-100-python"),
    "caltech101": ("Caltech-101", "{r}/caltech101/101_ObjectCategories/<class>/*.jpg "
                   "(101_ObjectCategories.tar.gz extracted)", "caltech101/101_ObjectCategories"),
    "caltech256": ("Caltech-256", "{r}/caltech256/256_ObjectCategories/<class>/*.jpg "
                   "(256_ObjectCategories.tar extracted)", "caltech256/256_ObjectCategories"),
    "food101": ("Food-101", "{r}/food-101/images/<class>/*.jpg and {r}/food-101/meta/{{train,test}}.json "
                "(food-101.tar.gz extracted)", "food-101"),
}


class DataError(ValueError):
    """A dataset that cannot be loaded; one-line message (the CLI prints it and exits with code 2)."""


def _stage_hint(name: str, root: str) -> str:
    """The ``lbfl data fetch`` command that puts ``name`` where the trainer looks (the tail of an error)."""
    arg = root if root.startswith("<") else shlex.quote(root)
    return f"; stage it with: lbfl data fetch {name} --root {arg}"


def user_data_root(name: str) -> str:
    """A directory the user can write to stage ``name`` in: $XDG_CACHE_HOME/lbfl_mpi/NAME, by default
    ~/.cache/lbfl_mpi/NAME (the default Fashion-MNIST root is a system directory that only root can fill)."""
    try:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    except RuntimeError:  # no home directory known
        cache = "~/.cache"
    return str(Path(cache) / "lbfl_mpi" / name)


def _default_root_hint(name: str) -> str:
    """The tail of an error about a dataset missing at its system default root: where a user can stage it."""
    mine = shlex.quote(user_data_root(name))
    return (f"; install Debian's dataset-fashion-mnist package (as root), or stage it where you can write with: "
            f"lbfl data fetch {name} --root {mine} and train with --set data.root={mine}")


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (error messages are printed as exactly one line)."""
    return " ".join(str(e).split()) or type(e).__name__


@dataclass
class TensorData:
    """In-memory dataset: x float32 [N, C, H, W], y int64 [N]."""
    x: torch.Tensor
    y: torch.Tensor
    # device -> the copy made by to(); the training loader and every evaluation share one copy
    _copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def to(self, device: torch.device | str) -> TensorData:
        """The same samples on ``device`` (x float32, y int64). The copy is made on the first call
        for a device and reused afterwards; ``self`` when the tensors are already there as such."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:  # "cuda" means the current device, as in .to()
            dev = torch.device("cuda", torch.cuda.current_device())
        if (self.x.device == dev and self.y.device == dev and self.x.dtype == torch.float32
                and self.y.dtype == torch.int64):
            return self
        key = str(dev)
        if key not in self._copies:
            self._copies[key] = TensorData(self.x.to(dev, torch.float32), self.y.to(dev, torch.int64))
        return self._copies[key]


@dataclass
class DatasetBundle:
    train: object            # TensorData or a torchvision map-style dataset
    test: object
    num_classes: int
    input_shape: tuple       # (C, H, W)
    train_labels: np.ndarray  # int64 labels of train, in order
    val: object = None       # data.val_fraction's validation split of the training set (holdout.py), or None


def load_dataset(cfg: DataConfig, seed: int = 0) -> DatasetBundle:
    """Load ``cfg.name``, with ``data.train_subset`` and ``data.val_fraction`` applied (holdout.py).
    ``seed`` is accepted for symmetry; no split or sample depends on it."""
    del seed
    bundle = _load(cfg)
    if not (cfg.train_subset or cfg.val_fraction):
        return bundle
    try:
        train_idx, val_idx = holdout_indices(bundle.train_labels, cfg.train_subset, cfg.val_fraction)
    except HoldoutError as e:
        raise DataError(f"{e} of data.name={cfg.name!r}") from None
    return DatasetBundle(take(bundle.train, train_idx), bundle.test, bundle.num_classes, bundle.input_shape,
                         bundle.train_labels[train_idx], take(bundle.train, val_idx) if len(val_idx) else None)


def train_probe(bundle: DatasetBundle, count: int, key: str = "train.eval_train_samples"):
    """``count`` (config key ``key``) of the bundle's training set (holdout.probe), or None when 0."""
    try:
        return probe(bundle.train, count, key)
    except HoldoutError as e:
        raise DataError(str(e)) from None


def eval_sets(bundle: DatasetBundle, train) -> dict:
    """The worker's held-out sets beside the test set, as its keyword arguments: the validation split,
    train.eval_train_samples of the training set (the train probe) and train.eval_bn_recompute of it
    (the BatchNorm statistics set); each None where its key leaves it out. ``train`` is the TrainConfig."""
    return {"val_set": bundle.val, "probe_set": train_probe(bundle, train.eval_train_samples),
            "bn_set": train_probe(bundle, train.eval_bn_recompute, "train.eval_bn_recompute")}


def _load(cfg: DataConfig) -> DatasetBundle:
    if cfg.name == "digits":
        return _digits()
    if cfg.name == "fashion_mnist":
        return _fashion_mnist(cfg.root)
    if cfg.name == "synthetic":
        return _synthetic(cfg)
    if cfg.name in _LAYOUT:
        return _torchvision(cfg)
    raise DataError(f"data.name={cfg.name!r} is unknown (choices: {', '.join(DATASET_NAMES)})")


def _normalised(train: np.ndarray, test: np.ndarray, ytr, yte, num_classes: int) -> DatasetBundle:
    mean, std = float(train.mean()), float(train.std()) or 1.0
    xtr = torch.from_numpy(((train - mean) / std).astype(np.float32))
    xte = torch.from_numpy(((test - mean) / std).astype(np.float32))
    ytr = np.asarray(ytr, dtype=np.int64)
    return DatasetBundle(TensorData(xtr, torch.from_numpy(ytr.copy())),
                         TensorData(xte, torch.from_numpy(np.asarray(yte, dtype=np.int64))),
                         num_classes, tuple(xtr.shape[1:]), ytr)


def digits_csv() -> Path:
    """scikit-learn's bundled ``digits.csv.gz`` (what ``load_digits`` reads), found without importing
    scikit-learn: its import costs seconds at every start-up of every rank."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise DataError("data.name='digits' needs scikit-learn's bundled digits (pip install scikit-learn)")
    return path


def _digits() -> DatasetBundle:
    """``sklearn.datasets.load_digits`` (the same file, parsed the same way: np.loadtxt of the CSV, the
    last column the label), split 80/20 by the stored indices of digits_split.py."""
    from .digits_split import TEST, TRAIN

    with gzip.open(digits_csv(), "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    target = data[:, -1].astype(int)
    x = (data[:, :-1].reshape(-1, 8, 8) / 16.0)[:, None, :, :]
    tr, te = np.asarray(TRAIN), np.asarray(TEST)
    return _normalised(x[tr], x[te], target[tr], target[te], 10)


# ---------------------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) whose big-endian magic number must equal ``magic``."""
    path = Path(path)
    gz = path.suffix == ".gz"
    try:  # a regular file only: a FIFO or device at the name is an error, not a blocked read
        with open_regular(path) as fh:
            raw = gzip.GzipFile(fileobj=fh).read() if gz else fh.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a truncated gzip, EOFError
        what = "gzip file" if gz else "file"
        raise DataError(f"{path}: cannot read the {what}, corrupt or truncated "
                        f"({type(e).__name__}: {_one_line(e)})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = raw[:4].hex() if len(raw) >= 4 else "truncated file"
        raise DataError(f"{path}: not an IDX file with magic 0x{magic:08x} (got {got})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes, {ndim} dimensions expected)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != count:
        raise DataError(f"{path}: IDX header says {dims} ({count} bytes) but {data.size} bytes follow")
    return data.reshape(dims)


def _fashion_mnist(cfg_root: str) -> DatasetBundle:
    root = cfg_root or FASHION_DEFAULT_ROOT
    where = f"data.root={cfg_root!r}" + ("" if cfg_root else f" (default {root})")
    found = []
    for name in FASHION_FILES:
        cands = [Path(root) / name, Path(root) / name[:-3]]  # uncompressed copies are fine too
        hit = next((p for p in cands if p.is_file()), None)
        if hit is None:
            hint = _stage_hint("fashion_mnist", root) if cfg_root else _default_root_hint("fashion_mnist")
            raise DataError(f"{where}: Fashion-MNIST not found; expected the files "
                            f"{', '.join(FASHION_FILES)} (or the same without .gz) in {root}/{hint}")
        found.append(hit)
    xtr, ytr = read_idx(found[0], 0x803), read_idx(found[1], 0x801)
    xte, yte = read_idx(found[2], 0x803), read_idx(found[3], 0x801)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{where}: Fashion-MNIST image and label counts differ")
    xtr = (xtr.astype(np.float32) / 255.0)[:, None]
    xte = (xte.astype(np.float32) / 255.0)[:, None]
    return _normalised(xtr, xte, ytr, yte, 10)


# -------------------------------------------------------------------------------------------- synthetic
def _synthetic(cfg: DataConfig) -> DatasetBundle:
    shape = tuple(int(s) for s in cfg.synthetic_shape)
    k = int(cfg.synthetic_classes)
    if len(shape) != 3 or min(shape) < 1 or k < 2:
        raise DataError(f"synthetic data needs data.synthetic_shape=[C, H, W] and >= 2 classes, "
                        f"got {list(shape)} and {k}")
    too_big = synthetic_problem(k, shape, cfg.synthetic_train, cfg.synthetic_test)  # before the allocation
    if too_big:
        raise DataError(too_big)
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    templates = torch.randn((k, *shape), generator=g)

    def draw(n: int, stream: int) -> TensorData:
        # Separate streams so the test set does not change when synthetic_train does.
        gs = torch.Generator().manual_seed(_SYNTHETIC_SEED + stream)
        y = (torch.arange(n) % k)[torch.randperm(n, generator=gs)]
        x = templates[y] + float(cfg.synthetic_noise) * torch.randn((n, *shape), generator=gs)
        return TensorData(x.float(), y.long())

    train, test = draw(int(cfg.synthetic_train), 1), draw(int(cfg.synthetic_test), 2)
    return DatasetBundle(train, test, k, shape, train.y.numpy().copy())


# ------------------------------------------------------------------------------------------ torchvision
def _to_rgb(img):
    # Caltech-101/256 contain grayscale (and the odd CMYK) images; models expect 3 channels.
    return img.convert("RGB")


def _not_found(name: str, root: str) -> DataError:
    title, layout, _ = _LAYOUT[name]
    return DataError(f"data.root={root!r}: {title} not found; expected {layout.format(r=root)}"
                     f"{_stage_hint(name, root)}")


def _torchvision(cfg: DataConfig) -> DatasetBundle:
    name, root = cfg.name, cfg.root
    if not root:
        _, layout, _ = _LAYOUT[name]
        raise DataError(f"data.root must be set for data.name={name!r} (nothing is downloaded); "
                        f"expected {layout.format(r='<root>')}{_stage_hint(name, '<root>')}")
    # Checked first because torchvision's Caltech classes create directories under root.
    if not (Path(root) / _LAYOUT[name][2]).exists():
        raise _not_found(name, root)
    try:
        from torchvision import datasets
        from torchvision import transforms as T
    except ImportError:
        raise DataError(f"data.name={name!r} needs torchvision (pip install torchvision)") from None
    try:
        if name in _CIFAR_STATS:
            return _cifar(name, root, cfg.image_size or 32, datasets, T)
        return _large_images(name, root, cfg.image_size or 224, datasets, T)
    except (RuntimeError, ValueError):  # torchvision's own "not found" / "not a Caltech folder" errors
        raise _not_found(name, root) from None


def _cifar(name, root, size, datasets, T) -> DatasetBundle:
    """Standard CIFAR augmentation; ``size`` other than 32 resizes (e.g. 224 for ImageNet-shaped models).

    The training set stays a torchvision dataset: its random crop and flip are drawn afresh for
    every sample, so it cannot be computed once. The test transform is deterministic; at 32x32 it
    is applied here to the whole array at once (:func:`_cifar_tensors`, the same values as the
    per-image transform), which gives a :class:`TensorData` that a loader can keep on the device.
    Resized test sets stay per-image: 10000 images at 224x224 would take 6 GB as float32.
    """
    mean, std = _CIFAR_STATS[name]
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    resize = [T.Resize(size)] if size != 32 else []
    train_tf = T.Compose(resize + [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip(),
                                   T.ToTensor(), T.Normalize(mean, std)])
    test_tf = T.Compose(resize + [T.ToTensor(), T.Normalize(mean, std)])
    train = cls(root, train=True, transform=train_tf, download=False)
    test = cls(root, train=False, transform=test_tf, download=False)
    if size == 32:
        test = _cifar_tensors(test.data, test.targets, mean, std)
    return DatasetBundle(train, test, NUM_CLASSES[name], (3, size, size),
                         np.asarray(train.targets, dtype=np.int64))


def _cifar_tensors(images: np.ndarray, targets, mean, std) -> TensorData:
    """ToTensor + Normalize of a whole uint8 [N, H, W, C] array: the same float32 operations in the
    same order as the per-image transform (x / 255, then (x - mean) / std), so bit-identical."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    x = x.to(torch.float32).div(255)
    x.sub_(torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    x.div_(torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    return TensorData(x, torch.as_tensor(np.asarray(targets, dtype=np.int64)))


def _large_images(name, root, size, datasets, T) -> DatasetBundle:
    mean, std = _IMAGENET_STATS
    train_tf = T.Compose([T.Lambda(_to_rgb), T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(mean, std)])
    test_tf = T.Compose([T.Lambda(_to_rgb), T.Resize(round(size * 8 / 7)), T.CenterCrop(size),
                         T.ToTensor(), T.Normalize(mean, std)])
    shape = (3, size, size)
    if name == "food101":
        train = datasets.Food101(root, split="train", transform=train_tf, download=False)
        test = datasets.Food101(root, split="test", transform=test_tf, download=False)
        return DatasetBundle(train, test, NUM_CLASSES[name], shape,
                             np.asarray(train._labels, dtype=np.int64))
    cls = datasets.Caltech101 if name == "caltech101" else datasets.Caltech256
    # No official split: two views of the same files (different transforms), fixed 80/20 split.
    full_train, full_test = cls(root, transform=train_tf), cls(root, transform=test_tf)
    labels = np.asarray(full_train.y, dtype=np.int64)
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
    n_test = len(labels) // 5
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    from torch.utils.data import Subset
    return DatasetBundle(Subset(full_train, train_idx.tolist()), Subset(full_test, test_idx.tolist()),
                         NUM_CLASSES[name], shape, labels[train_idx])
