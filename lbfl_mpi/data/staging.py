"""``lbfl data fetch | check``: stage a dataset on a login node and verify it before a compute job.

``fetch`` downloads one of the torchvision datasets (and Fashion-MNIST) into exactly the layout the
trainer reads with ``data.root=DIR``; compute nodes usually have no internet, so this runs where there
is, and DIR is then shared with (or copied to) the compute nodes. ``check`` loads the dataset through
the trainer's own :func:`~lbfl_mpi.data.datasets.load_dataset`, so it reports what training would see:
the layout, the classes found on disk against the number the model is built for, the train and test
sample counts, and the input shape (one sample of each split is decoded).

Exit codes as for ``lbfl``: 0 success, 2 a dataset that cannot be fetched or does not check out (one
line on stderr, ``lbfl data fetch: error: ...`` or ``lbfl data check: error: ...``). ``fetch`` of the
built-in datasets (digits, synthetic) prints that there is nothing to fetch and exits 0.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import socket
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ..config import DATASETS, NUM_CLASSES, ConfigError, DataConfig
from ..config.checks import check_path_text
from ..files import printable
from .datasets import _LAYOUT, FASHION_DEFAULT_ROOT, DataError, TensorData, load_dataset

BAD_INPUT = 2
BUILT_IN = {"digits": "scikit-learn's copy of the UCI digits", "synthetic": "generated from a fixed seed"}
FETCHABLE = ("cifar10", "cifar100", "caltech101", "caltech256", "food101", "fashion_mnist")
# What a fetch downloads (approximate size of the archive), for the progress line.
_DOWNLOAD_SIZE = {"cifar10": "~170 MB", "cifar100": "~170 MB", "caltech101": "~140 MB",
                  "caltech256": "~1.2 GB", "food101": "~5 GB", "fashion_mnist": "~30 MB"}
# Errors a download or an extraction raises: network (URLError is an OSError), disk, checksum
# (RuntimeError), broken archives.
_FETCH_ERRORS = (OSError, RuntimeError, EOFError, ValueError, tarfile.TarError, zipfile.BadZipFile,
                 http.client.HTTPException)
# Errors loading a staged dataset raises besides DataError: unreadable files, broken pickles or images.
_LOAD_ERRORS = (DataError, OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(getattr(e, "reason", None) or e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _progress(msg: str) -> None:
    print(f"lbfl data fetch: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ check
def _layout_path(name: str, root: str) -> str:
    if name == "fashion_mnist":
        return f"{root or FASHION_DEFAULT_ROOT}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]"
    return str(Path(root) / _LAYOUT[name][2])


def _caltech_names(name: str, base: Path, categories: list[str]) -> None:
    """torchvision's Caltech classes count the files of each class folder and then open them by
    number (``image_0001.jpg`` ...; ``001_0001.jpg`` ... for Caltech-256), so a gap or a stray file
    fails only when that sample is drawn during training. Checked here from the folder listings."""
    for i, c in enumerate(categories):
        folder = base / c
        if not folder.is_dir():
            raise DataError(f"{folder}: not a class folder (every entry of {base} is taken as a class)")
        files = os.listdir(folder)
        if name == "caltech101":
            want = [f"image_{k:04d}.jpg" for k in range(1, len(files) + 1)]
        else:
            files = [f for f in files if f.endswith(".jpg")]
            want = [f"{i + 1:03d}_{k:04d}.jpg" for k in range(1, len(files) + 1)]
        missing = sorted(set(want) - set(files))
        if missing:
            raise DataError(f"{folder}: {len(files)} files but {missing[0]} is missing; torchvision reads "
                            f"exactly {want[0]} .. {want[-1]} from this folder")


def _classes_on_disk(name: str, bundle, expected: int) -> tuple[int, str]:
    """Number of classes the files define, and where they were counted."""
    if isinstance(bundle.train, TensorData):  # digits, fashion_mnist, synthetic: the labels are the classes
        labels = np.concatenate([bundle.train_labels, bundle.test.y.cpu().numpy()])
        if labels.size and (labels.min() < 0 or labels.max() >= expected):
            raise DataError(f"labels range over {int(labels.min())}..{int(labels.max())}; the trainer expects "
                            f"0..{expected - 1} ({expected} classes)")
        return len(np.unique(labels)), "distinct labels"
    ds = getattr(bundle.train, "dataset", bundle.train)  # caltech*: a Subset of the full dataset
    if name in ("caltech101", "caltech256"):
        base = Path(ds.root) / ("101_ObjectCategories" if name == "caltech101" else "256_ObjectCategories")
        _caltech_names(name, base, ds.categories)
        return len(ds.categories), f"class folders in {base}"
    if name == "food101":
        test_classes = getattr(bundle.test, "classes", ds.classes)
        if list(test_classes) != list(ds.classes):
            raise DataError(f"food-101/meta/train.json has {len(ds.classes)} classes but test.json has "
                            f"{len(test_classes)}, or different ones")
        return len(ds.classes), "classes in food-101/meta/train.json"
    return len(ds.classes), "class names in the dataset's meta file"


def check_dataset(name: str, root: str = "", image_size: int = 0) -> dict:
    """Load ``name`` from ``root`` exactly as training would and verify it; raises :class:`DataError`
    with a one-line message on any problem, else returns what was found."""
    if name not in DATASETS:
        raise DataError(f"data.name={name!r} is unknown (choices: {', '.join(DATASETS)})")
    cfg = DataConfig(name=name, root=root, image_size=image_size)
    where = "built in" if name in BUILT_IN else f"at {root or FASHION_DEFAULT_ROOT}"
    if name == "caltech101" and root:
        # torchvision drops this non-class folder from the list and fails (ValueError) without it.
        cats = Path(root) / "caltech101" / "101_ObjectCategories"
        if cats.is_dir() and not (cats / "BACKGROUND_Google").is_dir():
            raise DataError(f"{cats}: the BACKGROUND_Google folder is missing (part of the Caltech-101 "
                            f"archive; torchvision skips it as a non-class folder and fails without it)")
    try:
        bundle = load_dataset(cfg)
        expected = NUM_CLASSES.get(name, int(cfg.synthetic_classes))
        if bundle.num_classes != expected:
            raise DataError(f"the trainer builds {bundle.num_classes} outputs, expected {expected}")
        found, counted = _classes_on_disk(name, bundle, expected)
        if found != expected:
            raise DataError(f"{found} classes found ({counted}), the trainer expects {expected} "
                            f"(NUM_CLASSES[{name!r}]); the dataset is incomplete or not {name}")
        n_train, n_test = len(bundle.train), len(bundle.test)
        for split, ds, n in (("train", bundle.train, n_train), ("test", bundle.test, n_test)):
            if n == 0:
                raise DataError(f"the {split} split is empty")
            x, _ = ds[0]  # decodes one file: unreadable images fail here rather than mid-training
            if tuple(x.shape) != tuple(bundle.input_shape):
                raise DataError(f"a {split} sample has shape {tuple(x.shape)}, the trainer expects "
                                f"{tuple(bundle.input_shape)}")
    except _LOAD_ERRORS as e:
        msg = " ".join(str(e).split()) if isinstance(e, DataError) else _one_line(e)
        raise DataError(msg if msg.startswith("data.") else f"{name} {where}: {msg}") from None
    return {"name": name, "root": root or (FASHION_DEFAULT_ROOT if name == "fashion_mnist" else ""),
            "layout": None if name in BUILT_IN else _layout_path(name, root), "ok": True,
            "classes": found, "expected_classes": expected, "train": n_train, "test": n_test,
            "input_shape": [int(s) for s in bundle.input_shape]}


def format_check(r: dict) -> str:
    shape = "x".join(str(s) for s in r["input_shape"])
    head = f"{r['name']} (built in): " if r["layout"] is None else \
        f"{r['name']} at {r['root']}: layout {r['layout']} OK, "
    return f"{head}{r['classes']} classes, {r['train']} train / {r['test']} test samples, input {shape}"


def _print_check(r: dict, as_json: bool) -> None:
    print(json.dumps(r, indent=2) if as_json else format_check(r), flush=True)


def cmd_check(args) -> int:
    try:
        check_path_text("--root", args.root or "")
        result = check_dataset(args.name, args.root or "", args.image_size)
    except (DataError, ConfigError) as e:
        print(f"lbfl data check: error: {printable(e)}", file=sys.stderr, flush=True)
        return BAD_INPUT
    _print_check(result, args.json)
    return 0


# ------------------------------------------------------------------------------------------------ fetch
def _download(name: str, root: Path) -> None:
    """Download ``name`` into ``root`` in the trainer's layout; torchvision skips files already there
    with the right checksum, so a second fetch (or one after an interrupted download) is cheap."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_url

    if name == "fashion_mnist":
        # The four .gz files directly in root (torchvision's FashionMNIST class would put them under
        # root/FashionMNIST/raw/); each is verified against torchvision's md5.
        cls = datasets.FashionMNIST
        for filename, md5 in cls.resources:
            errors = []
            for mirror in cls.mirrors:
                _progress(f"downloading {mirror}{filename} -> {root / filename}")
                try:
                    download_url(f"{mirror}{filename}", str(root), filename=filename, md5=md5)
                    break
                except _FETCH_ERRORS as e:
                    errors.append(e)
            else:
                raise errors[-1]
        return
    if name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        _progress(f"downloading {cls.url} -> {root / cls.filename}, extracting to {root / cls.base_folder}")
        cls(str(root), train=False, download=True)
    elif name in ("caltech101", "caltech256"):
        cls = datasets.Caltech101 if name == "caltech101" else datasets.Caltech256
        _progress(f"downloading the {_LAYOUT[name][0]} archive -> {root / name}/, extracting to "
                  f"{_layout_path(name, str(root))}")
        cls(str(root), download=True)
    elif name == "food101":
        cls = datasets.Food101
        _progress(f"downloading {cls._URL} -> {root}/, extracting to {root / 'food-101'}")
        cls(str(root), split="test", download=True)


def cmd_fetch(args) -> int:
    name, root = args.name, args.root or ""

    def fail(msg: str) -> int:
        print(f"lbfl data fetch: error: {printable(msg)}", file=sys.stderr, flush=True)
        return BAD_INPUT

    try:
        check_path_text("--root", root)
    except ConfigError as e:
        return fail(str(e))
    if not 0 < args.timeout <= 86_400:  # nan and inf fail too; socket timeouts must be finite and > 0
        return fail(f"--timeout={args.timeout}: must be a number of seconds in (0, 86400]")
    if name in BUILT_IN:
        print(f"{name} is built in ({BUILT_IN[name]}); nothing to fetch", flush=True)
        return 0
    if not root:
        return fail(f"{name}: --root DIR is required (the directory training will use as data.root)")
    present = name != "fashion_mnist" and (Path(root) / _LAYOUT[name][2]).exists()
    _progress(f"{name}: {'already present in' if present else f'fetching ({_DOWNLOAD_SIZE[name]}) into'} "
              f"{root}")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(args.timeout)  # a stalled connection fails instead of hanging
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        # torchvision prints its own progress to stdout; stdout is kept for the check result
        with contextlib.redirect_stdout(sys.stderr):
            _download(name, Path(root))
    except ImportError as e:
        return fail(f"{name}: fetching needs torchvision ({_one_line(e)})")
    except _FETCH_ERRORS as e:
        return fail(f"{name}: download into {root} failed: {_one_line(e)} (fetch on a node with internet "
                    f"access, then give the compute nodes data.root={shlex.quote(root)})")
    finally:
        socket.setdefaulttimeout(old_timeout)
    _progress(f"{name}: downloaded; checking {root} as the trainer will read it")
    try:
        result = check_dataset(name, root)
    except DataError as e:
        return fail(f"{name} downloaded, but the check failed: {e}")
    _print_check(result, args.json)
    return 0
