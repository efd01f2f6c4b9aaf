"""Data folders and files built for the data-staging tests: a Caltech-101 tree, Fashion-MNIST IDX files."""
import gzip
import re
import struct

import numpy as np

CHECK_LINE = re.compile(r"^(\w+) at (.+): layout (.+) OK, (\d+) classes, (\d+) train / (\d+) test samples, "
                        r"input (\d+)x(\d+)x(\d+)$")
# torchvision's Caltech101 lists every folder of 101_ObjectCategories, drops BACKGROUND_Google (which
# must exist) and opens image_0001.jpg .. image_NNNN.jpg in each; the Faces -> Faces_2 style renames
# apply to the Annotations folder only, so the class folders keep their archive names.
CALTECH_NAMED = ["Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant"]
CALTECH_CLASSES = CALTECH_NAMED + [f"class_{i:03d}" for i in range(101 - len(CALTECH_NAMED))]


def caltech101_tree(root):
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


def one_error_line(stderr: str, prefix: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def write_idx(path, arr, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fashion_files(root, n_train=23, n_test=11):
    """The four Fashion-MNIST IDX .gz files with every label 0..9 present; returns their paths."""
    rng = np.random.default_rng(1)
    paths = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        paths[f"{split}-images"] = root / f"{split}-images-idx3-ubyte.gz"
        paths[f"{split}-labels"] = root / f"{split}-labels-idx1-ubyte.gz"
        write_idx(paths[f"{split}-images"], rng.integers(0, 256, (n, 28, 28)), 0x803)
        write_idx(paths[f"{split}-labels"], np.arange(n) % 10, 0x801)
    return paths
