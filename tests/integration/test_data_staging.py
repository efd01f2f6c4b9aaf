"""``lbfl data check``, ``lbfl data fetch`` and ``lbfl train`` as processes on data folders built here:
the printed counts, --json, and one error line with exit 2 for missing or corrupt data."""
import json
import subprocess
import sys
import time

import numpy as np

from lbfl_mpi.config import NUM_CLASSES

from ..conftest import ROOT, _env, run_lbfl, tiny_run_args
from ..unit._data_files import CALTECH_CLASSES, CHECK_LINE, caltech101_tree, fashion_files, one_error_line


def test_check_caltech101_counts_equal_the_built_tree(tmp_path):
    """The printed class and train/test counts are those of the folder built here (80/20: test = N // 5)."""
    n = caltech101_tree(tmp_path)
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
    n = caltech101_tree(tmp_path)
    p = run_lbfl(["data", "check", "caltech101", "--root", str(tmp_path), "--image-size", "40", "--json"])
    r = json.loads(p.stdout)
    assert r["ok"] and r["classes"] == 101 and r["expected_classes"] == 101
    assert (r["train"], r["test"]) == (n - n // 5, n // 5) and r["input_shape"] == [3, 40, 40]


def test_check_caltech101_missing_class_folder_fails(tmp_path):
    """A missing class folder trains silently with 101 outputs and 100 classes; check refuses it and
    names both numbers, on one line, exit 2."""
    caltech101_tree(tmp_path)
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for f in (cats / "ant").iterdir():
        f.unlink()
    (cats / "ant").rmdir()
    p = run_lbfl(["data", "check", "caltech101", "--root", str(tmp_path)], check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1
    line = one_error_line(p.stderr, "lbfl data check: error:")
    assert "100 classes" in line and "expects 101" in line


def test_check_fashion_mnist_counts(tmp_path):
    """Tiny valid IDX files: the printed counts are the sample counts written, layout is DIR itself."""
    fashion_files(tmp_path, 23, 11)
    p = run_lbfl(["data", "check", "fashion_mnist", "--root", str(tmp_path)])
    m = CHECK_LINE.match(p.stdout.strip())
    assert m, p.stdout
    assert m.group(3).startswith(f"{tmp_path}/")
    assert (int(m.group(4)), int(m.group(5)), int(m.group(6))) == (10, 23, 11)
    assert tuple(int(m.group(i)) for i in (7, 8, 9)) == (1, 28, 28)


def test_corrupt_fashion_mnist_check_and_train_exit_2(tmp_path):
    """A corrupt .gz: `data check` and `lbfl train` each exit 2 with one error line naming the file."""
    data = tmp_path / "fm"
    data.mkdir()
    paths = fashion_files(data)
    paths["t10k-labels"].write_bytes(np.random.default_rng(2).bytes(300))
    p = run_lbfl(["data", "check", "fashion_mnist", "--root", str(data)], check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert str(paths["t10k-labels"]) in one_error_line(p.stderr, "lbfl data check: error:")
    out = tmp_path / "run"
    p = run_lbfl(tiny_run_args(out, "data.name=fashion_mnist", f"data.root={data}"), check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert str(paths["t10k-labels"]) in one_error_line(p.stderr, "lbfl: error:")
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
    line = one_error_line(p.stderr, "lbfl data fetch: error:")
    assert p.stderr.strip().splitlines()[-1] == line
    assert "cifar10" in line and "Connection refused" in line


def test_train_missing_dataset_cli_names_the_fetch_command(tmp_path):
    """`lbfl train` on an empty data.root: exit 2, one line that names `lbfl data fetch`."""
    out = tmp_path / "run"
    p = run_lbfl(tiny_run_args(out, "data.name=cifar10", f"data.root={tmp_path}"), check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"lbfl data fetch cifar10 --root {tmp_path}" in one_error_line(p.stderr, "lbfl: error:")
