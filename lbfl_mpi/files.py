"""Files lbfl writes: atomically, never through a planted link, as strict JSON, and deleted only when
lbfl wrote them.

A fixed temporary name (``model.pt.tmp``) can be pre-created as a symlink by anyone who can write the
run directory; opening it would overwrite the link's target. ``mkstemp`` creates a fresh file with
``O_CREAT | O_EXCL`` (so it never follows a link) under a random name in the same directory, and
``os.replace`` then swaps it in atomically: a reader sees the old file or the new one, never a part.

Strict JSON: Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON (RFC 8259)
and breaks ``jq``, JavaScript and strict parsers. Non-finite numbers become ``null`` instead, and numpy
scalars and arrays become plain Python values.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# what lbfl writes into a run directory (relative paths); nothing else is ever deleted by it
OWNED_FILES = (re.compile(r"config\.toml"), re.compile(r"summary\.json"), re.compile(r"model\.pt"),
               re.compile(r"rank\d{4}\.h5"), re.compile(r"checkpoints/latest\.json"),
               re.compile(r"checkpoints/step_\d{8}/(rank\d{4}\.pt|meta\.json)"),
               re.compile(r"(checkpoints/(step_\d{8}/)?)?\.[^/]+\.tmp"))
OWNED_DIRS = (re.compile(r"checkpoints/step_\d{8}"), re.compile(r"checkpoints"))


def temp_path(path: Path) -> Path:
    """A new, empty, exclusively created file beside ``path`` (random name, no link followed)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: Path):
    """Yield a fresh temporary path beside ``path``; on success it replaces ``path`` atomically, on
    an exception it is removed. For writers that need a path (torch.save, h5py)."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def owned(rel: str) -> bool:
    """Whether ``rel`` (a path relative to the run directory, '/'-separated) is a file lbfl writes."""
    return any(p.fullmatch(rel) for p in OWNED_FILES)


def owned_entries(out: Path) -> tuple[list[Path], list[Path]]:
    """(files, directories) in run directory ``out`` that lbfl wrote, found without following links.
    Directories come deepest first, so they can be removed once emptied."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(out, followlinks=False):
        rel_dir = os.path.relpath(dirpath, out)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if owned(rel_dir + name):
                files.append(Path(dirpath) / name)
        for d in dirnames:
            if any(p.fullmatch(rel_dir + d) for p in OWNED_DIRS) and not os.path.islink(os.path.join(dirpath, d)):
                dirs.append(Path(dirpath) / d)
    dirs.sort(key=lambda p: len(p.parts), reverse=True)
    return files, dirs


def remove_owned(out: Path) -> list[str]:
    """Delete what lbfl wrote in ``out`` (a link is removed, never its target); directories only when
    empty afterwards. Returns the removed paths relative to ``out``."""
    files, dirs = owned_entries(out)
    removed = []
    for f in files:
        f.unlink(missing_ok=True)
        removed.append(str(f.relative_to(out)))
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # holds files lbfl did not write: they stay, and so does the directory
            continue
    return removed

def to_jsonable(obj):
    """``obj`` with non-finite floats replaced by None and numpy values made plain (recursively)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_strict(obj, **kw) -> str:
    """``json.dumps`` of :func:`to_jsonable` ``(obj)``; ``allow_nan=False`` makes any non-finite number
    that slipped through an error instead of invalid JSON."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kw)


def write_json_atomic(path, obj, **kw) -> None:
    """Strict JSON to ``path`` through a fresh temporary file in the same directory and a rename.

    The temporary file comes from ``tempfile.mkstemp(dir=path's directory, prefix="." + name + ".",
    suffix=".tmp")`` (:func:`temp_path`): created with O_EXCL under a random name, so a link planted at
    a fixed name such as ``path + ".tmp"`` is never followed; readers see the old file or the new one.
    The text is built before the temporary file exists, so an unserialisable object leaves nothing."""
    write_text_atomic(Path(path), dumps_strict(obj, **kw) + "\n")
