"""Checkpoints: one file per rank per checkpoint step, plus ``meta.json`` and ``latest.json``.

Each rank writes ``checkpoints/step_XXXXXXXX/rankRRRR.pt`` (model, optimizer, RNG states, data
position, synchroniser and trainer state) to a fresh temporary name and renames it; after a barrier
rank 0 writes the step's ``meta.json`` (step, world size, resolved config) and atomically replaces
``latest.json``. A step directory with ``meta.json`` is therefore complete. The two newest are kept:
older ones lose the files lbfl wrote there (rankRRRR.pt, meta.json, their temporaries) and the
directory once empty, through directory handles opened with ``O_NOFOLLOW``, so a ``checkpoints/`` or
``step_*`` that is a symbolic link (into another run, say) is never followed, written or pruned.

Loading never unpickles code: files are read with ``torch.load(weights_only=True)``, which accepts
tensors and plain containers only; the one non-tensor state that needs more (numpy's RNG state) is
stored as a tensor. A file that fails to load (truncated, missing, crafted) makes the ranks agree to
fall back to the previous complete checkpoint, with a one-line warning.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import stat
import sys
from pathlib import Path

import numpy as np
import torch

from ..files import open_regular, owned, printable, read_bytes, real_dir, save_torch, write_text_atomic

KEEP = 2
_STEP_DIR = re.compile(r"step_(\d{8})")
_JSON_MAX = 64 * 2**20  # meta.json holds the resolved config: kilobytes
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def ckpt_dir(out_dir, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


def _read_json(path: Path) -> dict | None:
    try:
        d = json.loads(read_bytes(path, max_bytes=_JSON_MAX))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) else None


def latest_checkpoint(out_dir) -> dict | None:
    p = Path(out_dir) / "checkpoints" / "latest.json"
    return _read_json(p) if not p.parent.is_symlink() and p.is_file() else None


def checkpoint_metas(out_dir) -> list[dict]:
    """Complete checkpoints of a run directory, newest first: ``{"step", "world_size", "config"?}``.
    A step directory counts when it has meta.json, or when latest.json names it (older runs)."""
    root = Path(out_dir) / "checkpoints"
    if root.is_symlink() or not root.is_dir():  # a link is never followed (the run dir check refuses it)
        return []
    metas = {}
    for d in root.iterdir():
        m = _STEP_DIR.fullmatch(d.name)
        if m is None or d.is_symlink() or not d.is_dir():
            continue
        meta = _read_json(d / "meta.json")
        if meta is not None and meta.get("step") == int(m.group(1)) and isinstance(meta.get("world_size"), int):
            metas[meta["step"]] = meta
    latest = latest_checkpoint(out_dir)
    if latest and isinstance(latest.get("step"), int) and latest["step"] not in metas \
            and ckpt_dir(out_dir, latest["step"]).is_dir() and not ckpt_dir(out_dir, latest["step"]).is_symlink():
        metas[latest["step"]] = latest
    return [metas[s] for s in sorted(metas, reverse=True)]


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(comm, out_dir, step: int, payload: dict, config: dict | None = None) -> None:
    """Collective: every rank writes its state for ``step`` (steps completed so far)."""
    d = real_dir(real_dir(Path(out_dir) / "checkpoints") / f"step_{step:08d}")
    save_torch({**payload, "step": step, "rng": rng_state()}, d / f"rank{comm.rank:04d}.pt")
    comm.barrier()
    if comm.rank == 0:
        meta = {"step": step, "world_size": comm.world_size}
        write_text_atomic(d / "meta.json", json.dumps({**meta, "config": config}))
        write_text_atomic(Path(out_dir) / "checkpoints" / "latest.json", json.dumps(meta))
        steps = sorted(m["step"] for m in checkpoint_metas(out_dir))
        for old in steps[:-KEEP]:
            prune(out_dir, old)


def prune(out_dir, step: int) -> list[str]:
    """Delete checkpoint ``step``: the files lbfl wrote in its directory, then the directory when it is
    empty (a file of the user's keeps it). Nothing when ``checkpoints/`` or ``step_*`` is a symbolic
    link or not a directory. Returns the names removed."""
    name = f"step_{step:08d}"
    removed: list[str] = []
    try:
        root = os.open(Path(out_dir) / "checkpoints", _DIR_FLAGS)
    except OSError:
        return removed
    try:
        sub = os.open(name, _DIR_FLAGS, dir_fd=root)
    except OSError:  # ELOOP: a link; ENOTDIR: a file; ENOENT: gone
        os.close(root)
        return removed
    try:
        for entry in os.listdir(sub):
            st = os.stat(entry, dir_fd=sub, follow_symlinks=False)
            if owned(f"checkpoints/{name}/{entry}") and not stat.S_ISDIR(st.st_mode):
                os.unlink(entry, dir_fd=sub)
                removed.append(entry)
        try:
            os.rmdir(name, dir_fd=root)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise
    finally:
        os.close(sub)
        os.close(root)
    return removed


def _load(path: Path) -> tuple[dict | None, str | None]:
    """This rank's payload, or the one-line reason it cannot be used."""
    try:
        with open_regular(path) as fh:  # a FIFO or device at the name is an error, not a blocked read
            payload = torch.load(fh, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except Exception as e:  # noqa: BLE001 - truncated zip, refused pickle, I/O error: all mean "unusable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"{path.name} cannot be loaded ({type(e).__name__}: {first[:160]})"
    if not isinstance(payload, dict) or "model" not in payload:
        return None, f"{path.name} is not an lbfl checkpoint"
    return payload, None


def load_latest_valid(comm, out_dir, steps: list[int]) -> tuple[int | None, dict | None, list[str]]:
    """Collective. Try ``steps`` newest first: every rank loads its own file, the ranks exchange
    whether that worked, and the first step every rank could load wins. Returns (step, this rank's
    payload, warnings), or (None, None, warnings) when no step is usable."""
    warnings = []
    for step in steps:
        payload, err = _load(ckpt_dir(out_dir, step) / f"rank{comm.rank:04d}.pt")
        errors = comm.allgather_obj(err)
        bad = [f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None]
        if not bad:
            return step, payload, warnings
        warnings.append(f"checkpoint step {step} skipped: {'; '.join(bad[:3])}"
                        + (f" (and {len(bad) - 3} more ranks)" if len(bad) > 3 else ""))
        if comm.rank == 0:
            print(f"lbfl: warning: {printable(warnings[-1])}", file=sys.stderr, flush=True)
    return None, None, warnings
