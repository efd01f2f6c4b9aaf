"""``lbfl data fetch | check`` on folders built here, and the trainer's errors for missing or corrupt data."""
import gzip
import hashlib
import http.server
import json
import re
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lbfl_mpi.cli import main
from lbfl_mpi.config import NUM_CLASSES, DataConfig
from lbfl_mpi.data import DataError, load_dataset, read_idx
from lbfl_mpi.data.staging import check_dataset

from ..conftest import ROOT, _env, run_lbfl, tiny_run_args

CHECK_LINE = re.compile(r"^(\w+) at (.+): layout (.+) OK, (\d+) classes, (\d+) train / (\d+) test samples, "
                        r"input (\d+)x(\d+)x(\d+)$")
# torchvision's Caltech101 lists every folder of 101_ObjectCategories, drops BACKGROUND_Google (which
# must exist) and opens image_0001.jpg .. image_NNNN.jpg in each; the Faces -> Faces_2 style renames
# apply to the Annotations folder only, so the class folders keep their archive names.
CALTECH_NAMED = ["Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant"]
CALTECH_CLASSES = CALTECH_NAMED + [f"class_{i:03d}" for i in range(101 - len(CALTECH_NAMED))]


def _caltech101_tree(root):
    """101 class folders with 1 or 2 JPEGs each, plus BACKGROUND_Google; returns the class sample count."""
    from PIL import Image
    cats = root / "caltech101" / "101_ObjectCategories"
    total = 0
    for i, c in enumerate(["BACKGROUND_Google"] + CALTECH_CLASSES):
        (cats / c).mkdir(parents=True)
        n = 1 + i % 2
        for k in range(1, n + 1):
            Image.new("L" if k == 2 else "RGB", (9, 7), 30 * k).save(cats / c / f"image_{k:04d}.jpg")
        total += n if c != "BACKGROUND_Google" else 0
    return total


def _one_error_line(stderr: str, prefix: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_check_caltech101_counts_equal_the_built_tree(tmp_path):
    """The printed class and train/test counts are those of the folder built here (80/20: test = N // 5)."""
    n = _caltech101_tree(tmp_path)
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    assert n == sum(1 for f in cats.glob("*/*.jpg") if f.parent.name != "BACKGROUND_Google") == 152
    p = run_lbfl(["data", "check", "caltech101", "--root", str(tmp_path)])
    assert p.stderr == ""
    m = CHECK_LINE.match(p.stdout.strip())
    assert m, p.stdout
    assert m.group(1) == "caltech101" and m.group(2) == str(tmp_path)
    assert m.group(3) == str(tmp_path / "caltech101" / "101_ObjectCategories")
    assert int(m.group(4)) == len(CALTECH_CLASSES) == NUM_CLASSES["caltech101"]
    assert (int(m.group(5)), int(m.group(6))) == (n - n // 5, n // 5)
    assert tuple(int(m.group(i)) for i in (7, 8, 9)) == (3, 224, 224)


def test_check_json_and_image_size(tmp_path):
    """--json carries the same counts; --image-size reaches DataConfig.image_size (the input shape moves)."""
    n = _caltech101_tree(tmp_path)
    p = run_lbfl(["data", "check", "caltech101", "--root", str(tmp_path), "--image-size", "40", "--json"])
    r = json.loads(p.stdout)
    assert r["ok"] and r["classes"] == 101 and r["expected_classes"] == 101
    assert (r["train"], r["test"]) == (n - n // 5, n // 5) and r["input_shape"] == [3, 40, 40]


def test_check_caltech101_missing_class_folder_fails(tmp_path):
    """A missing class folder trains silently with 101 outputs and 100 classes; check refuses it and
    names both numbers, on one line, exit 2."""
    _caltech101_tree(tmp_path)
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for f in (cats / "ant").iterdir():
        f.unlink()
    (cats / "ant").rmdir()
    p = run_lbfl(["data", "check", "caltech101", "--root", str(tmp_path)], check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1
    line = _one_error_line(p.stderr, "lbfl data check: error:")
    assert "100 classes" in line and "expects 101" in line


def test_check_caltech_file_numbering_and_background_folder(tmp_path):
    """torchvision opens image_0001.jpg .. image_NNNN.jpg by number: a gap would fail mid-training, and a
    missing BACKGROUND_Google folder fails inside torchvision; both are one-line DataErrors here."""
    _caltech101_tree(tmp_path)
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    (cats / "Faces" / "image_0002.jpg").rename(cats / "Faces" / "image_0003.jpg")
    with pytest.raises(DataError, match=r"Faces: 2 files but image_0002.jpg is missing") as e:
        check_dataset("caltech101", str(tmp_path))
    assert "\n" not in str(e.value)
    (cats / "Faces" / "image_0003.jpg").rename(cats / "Faces" / "image_0002.jpg")
    assert check_dataset("caltech101", str(tmp_path))["classes"] == 101
    for f in (cats / "BACKGROUND_Google").iterdir():
        f.unlink()
    (cats / "BACKGROUND_Google").rmdir()
    with pytest.raises(DataError, match="BACKGROUND_Google folder is missing"):
        check_dataset("caltech101", str(tmp_path))


def _write_idx(path, arr, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fashion_files(root, n_train=23, n_test=11):
    """The four Fashion-MNIST IDX .gz files with every label 0..9 present; returns their paths."""
    rng = np.random.default_rng(1)
    paths = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        paths[f"{split}-images"] = root / f"{split}-images-idx3-ubyte.gz"
        paths[f"{split}-labels"] = root / f"{split}-labels-idx1-ubyte.gz"
        _write_idx(paths[f"{split}-images"], rng.integers(0, 256, (n, 28, 28)), 0x803)
        _write_idx(paths[f"{split}-labels"], np.arange(n) % 10, 0x801)
    return paths


def test_check_fashion_mnist_counts(tmp_path):
    """Tiny valid IDX files: the printed counts are the sample counts written, layout is DIR itself."""
    _fashion_files(tmp_path, 23, 11)
    p = run_lbfl(["data", "check", "fashion_mnist", "--root", str(tmp_path)])
    m = CHECK_LINE.match(p.stdout.strip())
    assert m, p.stdout
    assert m.group(3).startswith(f"{tmp_path}/")
    assert (int(m.group(4)), int(m.group(5)), int(m.group(6))) == (10, 23, 11)
    assert tuple(int(m.group(i)) for i in (7, 8, 9)) == (1, 28, 28)


def test_fashion_mnist_labels_must_cover_the_classes(tmp_path):
    """Labels are Fashion-MNIST's only record of its classes: 9 distinct labels, or one out of range, fail."""
    paths = _fashion_files(tmp_path)
    _write_idx(paths["train-labels"], np.arange(23) % 9, 0x801)
    _write_idx(paths["t10k-labels"], np.arange(11) % 9, 0x801)
    with pytest.raises(DataError, match="9 classes found .*expects 10"):
        check_dataset("fashion_mnist", str(tmp_path))
    _write_idx(paths["train-labels"], np.arange(23) % 11, 0x801)
    with pytest.raises(DataError, match=r"labels range over 0..10"):
        check_dataset("fashion_mnist", str(tmp_path))


@pytest.mark.parametrize("kind", ["random", "truncated", "bad_crc"])
def test_read_idx_corrupt_gzip_is_one_line_data_error(tmp_path, kind):
    """Random bytes named .gz, a cut gzip stream, a wrong CRC: one-line DataError naming the file, not a
    gzip/zlib traceback."""
    good = tmp_path / "good.gz"
    _write_idx(good, np.zeros((40, 28, 28)), 0x803)
    raw = good.read_bytes()
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes({"random": np.random.default_rng(0).bytes(500), "truncated": raw[: len(raw) // 2],
                     "bad_crc": raw[:-8] + bytes(8)}[kind])
    with pytest.raises(DataError) as e:
        read_idx(bad, 0x803)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_fashion_mnist_check_and_train_exit_2(tmp_path):
    """A corrupt .gz: `data check` and `lbfl train` each exit 2 with one error line naming the file."""
    data = tmp_path / "fm"
    data.mkdir()
    paths = _fashion_files(data)
    paths["t10k-labels"].write_bytes(np.random.default_rng(2).bytes(300))
    p = run_lbfl(["data", "check", "fashion_mnist", "--root", str(data)], check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert str(paths["t10k-labels"]) in _one_error_line(p.stderr, "lbfl data check: error:")
    out = tmp_path / "run"
    p = run_lbfl(tiny_run_args(out, "data.name=fashion_mnist", f"data.root={data}"), check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert str(paths["t10k-labels"]) in _one_error_line(p.stderr, "lbfl: error:")
    assert not out.exists()


def test_fetch_offline_fails_fast_with_one_line(tmp_path):
    """No network (every proxy points at a closed port): exit 2, one error line naming the dataset and
    the reason, no traceback, well within a minute."""
    dead = "http://127.0.0.1:9"
    env = {**_env(), "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
           "no_proxy": "", "NO_PROXY": ""}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "lbfl_mpi", "data", "fetch", "cifar10", "--root", str(tmp_path / "d")],
                       env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert time.monotonic() - t0 < 60
    assert p.returncode == 2 and p.stdout == "", p.stderr
    line = _one_error_line(p.stderr, "lbfl data fetch: error:")
    assert p.stderr.strip().splitlines()[-1] == line
    assert "cifar10" in line and "Connection refused" in line


def test_fetch_fashion_mnist_lands_in_the_trainer_layout(tmp_path, monkeypatch, capsys):
    """fetch downloads the four .gz files directly into DIR (not torchvision's DIR/FashionMNIST/raw),
    verifies them and prints the check, whose counts are those of the files served."""
    from torchvision import datasets
    served = tmp_path / "served"
    served.mkdir()
    _fashion_files(served, 17, 9)
    files = sorted(served.iterdir())
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    monkeypatch.setattr(http.server.SimpleHTTPRequestHandler, "log_message", lambda *a: None)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{srv.server_port}/"])
    monkeypatch.setattr(datasets.FashionMNIST, "resources",
                        [(f.name, hashlib.md5(f.read_bytes()).hexdigest()) for f in files])
    root = tmp_path / "root"
    try:
        assert main(["data", "fetch", "fashion_mnist", "--root", str(root)]) == 0
    finally:
        srv.shutdown()
        srv.server_close()
    assert sorted(f.name for f in root.iterdir()) == [f.name for f in files]
    out = capsys.readouterr()
    m = CHECK_LINE.match(out.out.strip())
    assert m and (int(m.group(4)), int(m.group(5)), int(m.group(6))) == (10, 17, 9), out
    assert "downloading" in out.err
    b = load_dataset(DataConfig(name="fashion_mnist", root=str(root)))
    assert (len(b.train), len(b.test)) == (17, 9)


def test_fetch_built_in_dataset_is_a_no_op(capsys):
    """digits and synthetic come with the package: fetch says so in one line and exits 0."""
    for name in ("digits", "synthetic"):
        assert main(["data", "fetch", name]) == 0
        out = capsys.readouterr()
        assert out.out.strip() == out.out.strip().splitlines()[0] and "nothing to fetch" in out.out


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "caltech101", "caltech256", "food101", "fashion_mnist"])
def test_trainer_missing_dataset_names_the_fetch_command(tmp_path, name):
    """The trainer's own error for an absent dataset says which command stages it, with that root."""
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name=name, root=str(tmp_path)))
    assert str(e.value).endswith(f"; stage it with: lbfl data fetch {name} --root {tmp_path}")
    if name != "fashion_mnist":
        with pytest.raises(DataError, match=f"lbfl data fetch {name} --root <root>$"):
            load_dataset(DataConfig(name=name, root=""))


def test_train_missing_dataset_cli_names_the_fetch_command(tmp_path):
    """`lbfl train` on an empty data.root: exit 2, one line that names `lbfl data fetch`."""
    out = tmp_path / "run"
    p = run_lbfl(tiny_run_args(out, "data.name=cifar10", f"data.root={tmp_path}"), check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"lbfl data fetch cifar10 --root {tmp_path}" in _one_error_line(p.stderr, "lbfl: error:")
