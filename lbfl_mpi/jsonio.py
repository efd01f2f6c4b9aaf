"""Strict JSON: what lbfl writes parses with any JSON reader.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON (RFC 8259) and breaks
``jq``, JavaScript and strict parsers. Non-finite numbers become ``null`` instead, and numpy scalars
and arrays become plain Python values.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .fsutil import write_text_atomic


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
    suffix=".tmp")`` (fsutil.temp_path): created with O_EXCL under a random name, so a link planted at
    a fixed name such as ``path + ".tmp"`` is never followed; readers see the old file or the new one.
    The text is built before the temporary file exists, so an unserialisable object leaves nothing."""
    write_text_atomic(Path(path), dumps_strict(obj, **kw) + "\n")
