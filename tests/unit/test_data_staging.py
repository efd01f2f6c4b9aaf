"""Data staging in this process on folders built here: `lbfl data fetch` (cli.main) from a local server,
check_dataset's and read_idx's one-line errors, and the loader's error for a missing dataset.
The same commands as processes: tests/integration/test_data_staging.py."""
import hashlib
import http.server
import threading

import numpy as np
import pytest

from lbfl_mpi.cli import main
from lbfl_mpi.config import DataConfig
from lbfl_mpi.data import DataError, load_dataset, read_idx
from lbfl_mpi.data.staging import check_dataset

from ._data_files import CHECK_LINE, caltech101_tree, fashion_files, write_idx


def test_check_caltech_file_numbering_and_background_folder(tmp_path):
    """torchvision opens image_0001.jpg .. image_NNNN.jpg by number: a gap would fail mid-training, and a
    missing BACKGROUND_Google folder fails inside torchvision; both are one-line DataErrors here."""
    caltech101_tree(tmp_path)
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


def test_fashion_mnist_labels_must_cover_the_classes(tmp_path):
    """Labels are Fashion-MNIST's only record of its classes: 9 distinct labels, or one out of range, fail."""
    paths = fashion_files(tmp_path)
    write_idx(paths["train-labels"], np.arange(23) % 9, 0x801)
    write_idx(paths["t10k-labels"], np.arange(11) % 9, 0x801)
    with pytest.raises(DataError, match="9 classes found .*expects 10"):
        check_dataset("fashion_mnist", str(tmp_path))
    write_idx(paths["train-labels"], np.arange(23) % 11, 0x801)
    with pytest.raises(DataError, match=r"labels range over 0..10"):
        check_dataset("fashion_mnist", str(tmp_path))


@pytest.mark.parametrize("kind", ["random", "truncated", "bad_crc"])
def test_read_idx_corrupt_gzip_is_one_line_data_error(tmp_path, kind):
    """Random bytes named .gz, a cut gzip stream, a wrong CRC: one-line DataError naming the file, not a
    gzip/zlib traceback."""
    good = tmp_path / "good.gz"
    write_idx(good, np.zeros((40, 28, 28)), 0x803)
    raw = good.read_bytes()
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes({"random": np.random.default_rng(0).bytes(500), "truncated": raw[: len(raw) // 2],
                     "bad_crc": raw[:-8] + bytes(8)}[kind])
    with pytest.raises(DataError) as e:
        read_idx(bad, 0x803)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_fetch_fashion_mnist_lands_in_the_trainer_layout(tmp_path, monkeypatch, capsys):
    """fetch downloads the four .gz files directly into DIR (not torchvision's DIR/FashionMNIST/raw),
    verifies them and prints the check, whose counts are those of the files served."""
    from torchvision import datasets
    served = tmp_path / "served"
    served.mkdir()
    fashion_files(served, 17, 9)
    files = sorted(served.iterdir())
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)
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
