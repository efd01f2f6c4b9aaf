"""A tiny Fashion-MNIST copy in IDX format for the CPU dry run of benchmarks/gpu_fidelity.sh.

Run: python benchmarks/gpu_fidelity_data.py OUT_DIR [--from DIR ...] [--train 256] [--test 128] [--side 8]

The first ``--from`` folder that holds the four IDX files (``.gz`` or not) gives the first ``--train``
training and ``--test`` test images and their labels; without one, random uint8 images and labels are
written instead (and said so). Images are shrunk to ``--side`` pixels a side by averaging blocks (after
cropping the 28-pixel side to a multiple of ``--side``), so that a ResNet-18 step on CPU is cheap; the
model is unchanged. The four ``.gz`` files are written under the names the trainer reads. An OUT_DIR
already holding the same copy is left as it is.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from lbfl_mpi.data.datasets import FASHION_FILES, read_idx  # the trainer's own names and reader

IMAGES, LABELS = 0x803, 0x801


def source_files(folder: Path) -> list[Path] | None:
    """The four IDX files in ``folder`` (compressed or not), or None when one is missing."""
    found = []
    for name in FASHION_FILES:
        hit = next((p for p in (folder / name, folder / name[:-3]) if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def shrink(images: np.ndarray, side: int) -> np.ndarray:
    """Block means of the centre crop whose side is the largest multiple of ``side``."""
    n, h, w = images.shape
    k = min(h, w) // side
    if k < 1:
        raise ValueError(f"--side {side} is larger than the images ({h}x{w})")
    top, left = (h - k * side) // 2, (w - k * side) // 2
    crop = images[:, top:top + k * side, left:left + k * side].astype(np.float64)
    return crop.reshape(n, side, k, side, k).mean(axis=(2, 4)).round().astype(np.uint8)


def write_idx(path: Path, data: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + np.ascontiguousarray(data, dtype=np.uint8).tobytes())
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--from", dest="sources", action="append", default=[], metavar="DIR",
                    help="folders to take the images from, first complete one wins (repeatable)")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--test", type=int, default=128)
    ap.add_argument("--side", type=int, default=8)
    args = ap.parse_args()
    if min(args.train, args.test, args.side) < 1:
        print("gpu_fidelity_data: --train, --test and --side must be >= 1", file=sys.stderr)
        return 2
    src = next(((Path(d), f) for d in args.sources if d and (f := source_files(Path(d))) is not None), None)
    origin = f"the first images of {src[0]}" if src else "random uint8 images (no Fashion-MNIST folder found)"
    stamp = {"origin": origin, "train": args.train, "test": args.test, "side": args.side}
    args.out.mkdir(parents=True, exist_ok=True)
    done = args.out / "tiny.json"
    if done.is_file() and json.loads(done.read_text()) == stamp and source_files(args.out):
        print(f"gpu_fidelity_data: {args.out} already holds {args.train}/{args.test} images from {origin}")
        return 0
    rng = np.random.default_rng(0)
    for i, n in ((0, args.train), (2, args.test)):
        if src:
            x, y = read_idx(src[1][i], IMAGES)[:n], read_idx(src[1][i + 1], LABELS)[:n]
        else:
            x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(args.out / FASHION_FILES[i], shrink(x, args.side), IMAGES)
        write_idx(args.out / FASHION_FILES[i + 1], y, LABELS)
    done.write_text(json.dumps(stamp))
    print(f"gpu_fidelity_data: wrote {args.train} train / {args.test} test images ({args.side}x{args.side}) "
          f"from {origin} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
