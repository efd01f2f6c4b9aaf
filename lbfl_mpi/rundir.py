"""The run directory: refuse to clobber an earlier run, clean it on request, save the resolved config.

Layout: config.toml, rank0000.h5 ..., summary.json, model.pt, checkpoints/. Rank 0 decides and broadcasts the
decision, so every rank raises the same ConfigError (no rank is left waiting in a collective).
"""
from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

from .checkpoint import latest_checkpoint
from .config import Config, ConfigError

ARTIFACTS = ("config.toml", "summary.json", "model.pt")


def rank_file(out_dir: str | os.PathLike, rank: int) -> Path:
    return Path(out_dir) / f"rank{rank:04d}.h5"


def existing_run(out: Path) -> list[str]:
    """Names of files of an earlier run found in ``out``."""
    if not out.is_dir():
        return []
    found = [n for n in ARTIFACTS if (out / n).exists()]
    found += sorted(p.name for p in out.glob("rank*.h5"))
    if (out / "checkpoints").exists():
        found.append("checkpoints/")
    return found


# keys that do not change what a resumed run computes up to its checkpoint
RESUME_MAY_CHANGE = {"run.resume", "run.overwrite", "run.name", "run.checkpoint_every", "train.steps",
                     "train.eval_every", "train.eval_batch", "telemetry.flush_every", "data.root", "data.workers"}


def changed_keys(saved_toml: Path, cfg: Config) -> list[str]:
    """Keys whose value in ``cfg`` differs from the saved config, other than RESUME_MAY_CHANGE."""
    if not saved_toml.is_file():
        return []
    saved = tomllib.loads(saved_toml.read_text())
    now = cfg.to_dict()
    return [f"{sec}.{k}" for sec, table in now.items() for k, v in table.items()
            if f"{sec}.{k}" not in RESUME_MAY_CHANGE and saved.get(sec, {}).get(k, v) != v]


def _decide(cfg: Config, world_size: int) -> tuple[str | None, int | None]:
    """(error message or None, resume step or None), computed on rank 0."""
    out = Path(cfg.run.out_dir)
    if out.exists() and not out.is_dir():
        return f"run.out_dir={cfg.run.out_dir!r} exists and is not a directory", None
    found = existing_run(out)
    if cfg.run.resume:
        latest = latest_checkpoint(out)
        if latest is None:
            return (f"run.resume=true but run.out_dir={cfg.run.out_dir!r} holds no checkpoint "
                    "(set run.checkpoint_every to write them)"), None
        if latest["world_size"] != world_size:
            return (f"run.resume=true: the checkpoint was written by {latest['world_size']} ranks, "
                    f"this job has {world_size}"), None
        changed = changed_keys(out / "config.toml", cfg)
        if changed:
            return (f"run.resume=true: {', '.join(changed)} differ from the run being resumed "
                    f"(only {', '.join(sorted(RESUME_MAY_CHANGE))} may change)"), None
        return None, int(latest["step"])
    if found and not cfg.run.overwrite:
        return (f"run.out_dir={cfg.run.out_dir!r} already holds a run ({', '.join(found[:4])}); "
                "set run.resume=true to continue it or run.overwrite=true to replace it"), None
    return None, None


def prepare_run_dir(cfg: Config, comm) -> int | None:
    """Collective. Validate the run directory against resume/overwrite, create it, write config.toml.

    Returns the step to resume from, or None for a fresh run. Raises ConfigError on every rank.
    """
    decision = _decide(cfg, comm.world_size) if comm.rank == 0 else None
    error, resume_step = comm.bcast_obj(decision, root=0)
    if error:
        raise ConfigError(error)
    if comm.rank == 0:
        out = Path(cfg.run.out_dir)
        if cfg.run.overwrite:
            for name in existing_run(out):
                target = out / name.rstrip("/")
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "config.toml.tmp"
        tmp.write_text(cfg.to_toml())
        os.replace(tmp, out / "config.toml")
    comm.barrier()
    return resume_step
