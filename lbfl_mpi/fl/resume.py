"""Resuming the federated layer on another number of ranks (``fl.clients > 0``).

A federated checkpoint is written as every checkpoint is, one file per rank (run/checkpoint.py), but
what a rank file holds is not tied to its rank: the global model, server optimizer and control
variate (identical in every file), the map of which rank holds each client's state, and the states
of the clients that rank held. So a job of W ranks can continue a checkpoint written by W' ranks:

    1. new rank r loads the files of the old ranks j with j mod W = r (a rank that gets none, when the
       job grew, loads old rank 0's file for the global part only);
    2. it keeps the client states of those files, and every rank maps old holder j to new holder
       j mod W, so the ranks agree on where each state is;
    3. the ranks agree, as for any checkpoint, on the newest step every rank could load.

The next round samples the same clients (the sample depends on the seed and the round only), so the
run continues as the uninterrupted one would, up to the summation order of the round's allreduce.
The rank files of old ranks beyond W are moved to ``segments/`` (:func:`retire_rank_files`): their
rows stay readable, and the run directory's rank files are the W of the job.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..files import printable, real_dir
from ..run.checkpoint import _load, ckpt_dir


def files_for(rank: int, world_size: int, old_world: int) -> list[int]:
    """Step 1: the old rank files new rank ``rank`` of ``world_size`` reads."""
    return [j for j in range(old_world) if j % world_size == rank] or [0]


def merge(rank: int, world_size: int, loaded: list[tuple[int, dict]]) -> dict:
    """Step 2: one payload from the old files this rank read."""
    base = dict(loaded[0][1])
    fed = dict(base["federation"])
    own = [(j, p) for j, p in loaded if j % world_size == rank]
    fed["clients"] = {cid: st for _, p in own for cid, st in p["federation"]["clients"].items()}
    fed["samples"] = sum(int(p["federation"]["samples"]) for _, p in own)
    fed["owner"] = [o % world_size if o >= 0 else -1 for o in fed["owner"]]
    base["federation"] = fed
    base["elapsed"] = max(float(p["elapsed"]) for _, p in loaded)
    return base


def load_federated(comm, out_dir, decision) -> tuple[int | None, dict | None, list[str]]:
    """Collective: the newest checkpoint every rank could load its share of."""
    warnings = []
    for step, old_world in zip(decision.resume_steps, decision.resume_worlds):
        loaded, err = [], None
        for j in files_for(comm.rank, comm.world_size, old_world):
            payload, err = _load(ckpt_dir(out_dir, step) / f"rank{j:04d}.pt")
            if err is not None:
                break
            if "federation" not in payload:
                err = f"rank{j:04d}.pt holds no federated state"
                break
            loaded.append((j, payload))
        errors = comm.allgather_obj(err)
        bad = [f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None]
        if not bad:
            if old_world != comm.world_size and comm.rank == 0:
                print(f"lbfl: resuming the {old_world}-rank checkpoint of step {step} on {comm.world_size} ranks",
                      file=sys.stderr, flush=True)
            return step, merge(comm.rank, comm.world_size, loaded), warnings
        warnings.append(f"checkpoint step {step} skipped: {'; '.join(bad[:3])}")
        if comm.rank == 0:
            print(f"lbfl: warning: {printable(warnings[-1])}", file=sys.stderr, flush=True)
    return None, None, warnings


def retire_rank_files(out_dir, world_size: int, step: int) -> list[Path]:
    """Rank 0, after a resume on fewer ranks: move rankNNNN.h5 of ranks >= world_size to
    segments/step_SSSSSSSS/ (never deleted, never followed through a link)."""
    out = Path(out_dir)
    moved = []
    for f in sorted(out.glob("rank*.h5")):
        stem = f.name[4:-3]
        if f.is_symlink() or not stem.isdigit() or int(stem) < world_size:
            continue
        dest = real_dir(real_dir(out / "segments") / f"step_{step:08d}") / f.name
        os.replace(f, dest)
        moved.append(dest)
    return moved
