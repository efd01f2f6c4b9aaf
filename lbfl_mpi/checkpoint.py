"""Checkpoints: one file per rank per checkpoint step, plus ``latest.json`` naming the newest
complete one.

Each rank writes ``checkpoints/step_XXXXXXXX/rankRRRR.pt`` (model, optimizer, RNG states, data
position, synchroniser and trainer state) to a temporary name and renames it; after a barrier rank 0
atomically replaces ``latest.json``. A job killed at any point therefore resumes from the newest
checkpoint that every rank finished. The two newest checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

KEEP = 2


def ckpt_dir(out_dir, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(out_dir) -> dict | None:
    p = Path(out_dir) / "checkpoints" / "latest.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(comm, out_dir, step: int, payload: dict) -> None:
    """Collective: every rank writes its state for ``step`` (steps completed so far)."""
    d = ckpt_dir(out_dir, step)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"rank{comm.rank:04d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save({**payload, "step": step, "rng": rng_state()}, tmp)
    os.replace(tmp, path)
    comm.barrier()
    if comm.rank == 0:
        root = Path(out_dir) / "checkpoints"
        latest_tmp = root / "latest.json.tmp"
        latest_tmp.write_text(json.dumps({"step": step, "world_size": comm.world_size}))
        os.replace(latest_tmp, root / "latest.json")
        for old in sorted(root.glob("step_*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(comm, out_dir, step: int, device: torch.device) -> dict:
    """This rank's checkpoint payload for ``step``, on the CPU (RNG states must stay CPU ByteTensors;
    load_state_dict moves model and optimizer state to their device). The caller restores RNGs."""
    path = ckpt_dir(out_dir, step) / f"rank{comm.rank:04d}.pt"
    return torch.load(path, map_location="cpu", weights_only=False)
