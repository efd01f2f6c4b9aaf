"""The run directory: refuse to clobber an earlier run, clean it on request, save the resolved config,
and keep a second job out while this one writes.

Layout: config.toml, rank0000.h5 ..., summary.json, model.pt, checkpoints/, .lbfl.lock. Rank 0 decides
and broadcasts the decision, so every rank raises the same ConfigError (no rank is left waiting in a
collective). Nothing is written before the decision; overwriting deletes only files lbfl writes
(lbfl_mpi/files.py), and only in a directory whose config.toml lbfl wrote.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ConfigError
from ..files import kind, printable, read_text, remove_owned, write_text_atomic
from ..telemetry.validate import check_rank_file
from .checkpoint import checkpoint_metas

ARTIFACTS = ("config.toml", "summary.json", "model.pt")
CONFIG_HEADER = "# lbfl_mpi run configuration, written by `lbfl train` (resolved values)\n"
LOCK_NAME = ".lbfl.lock"
_RANK_FILE = re.compile(r"rank\d{4}\.h5")
_CONFIG_MAX = 16 * 2**20  # a resolved config is a few kilobytes

# keys that do not change what a resumed run computes up to its checkpoint
RESUME_MAY_CHANGE = {"run.resume", "run.overwrite", "run.name", "run.checkpoint_every", "run.out_dir",
                     "run.preempt_signals", "run.preempt_check_every", "train.steps", "train.eval_every",
                     "train.eval_batch", "train.nonfinite", "telemetry.flush_every", "data.root",
                     "data.workers", "dist.timeout_s", "sync.wait_poll_us",
                     "scaling.teacher_pretrain_steps"}  # pretraining runs on a fresh start only

_lock_fd: int | None = None  # held by rank 0 until the process ends (the kernel releases it on exit)


def rank_file(out_dir: str | os.PathLike, rank: int) -> Path:
    return Path(out_dir) / f"rank{rank:04d}.h5"


def existing_run(out: Path) -> list[str]:
    """Names of files of an earlier run found in ``out``."""
    if not out.is_dir():
        return []
    found = [n for n in ARTIFACTS if (out / n).exists()]
    found += sorted(p.name for p in out.glob("rank*.h5"))
    ck = out / "checkpoints"
    if ck.is_dir() and ((ck / "latest.json").exists() or any(ck.glob("step_*"))):
        found.append("checkpoints/")
    return found


def saved_config(out: Path) -> dict | None:
    """The config.toml that lbfl wrote in ``out`` as a dict; None when absent or not lbfl's."""
    p = out / "config.toml"
    try:
        text = read_text(p, max_bytes=_CONFIG_MAX)  # a FIFO or device there is "not lbfl's", never a hang
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if text.startswith(CONFIG_HEADER) or isinstance(data.get("run", {}).get("out_dir"), str):
        return data  # the header, or (older versions) the resolved [run] table lbfl always writes
    return None


def changed_keys(saved: dict | None, cfg: Config) -> list[str]:
    """Keys whose value in ``cfg`` differs from the saved config, other than RESUME_MAY_CHANGE."""
    if not saved:
        return []
    now = cfg.to_dict()
    return [f"{sec}.{k}" for sec, table in now.items() for k, v in table.items()
            if f"{sec}.{k}" not in RESUME_MAY_CHANGE and saved.get(sec, {}).get(k, v) != v]


def _unusable_dir(out: Path, key: str) -> str | None:
    """Why ``out`` can neither be used nor created, or None."""
    if out.is_symlink() and not out.exists():
        return f"{key}={str(out)!r} is a dangling symbolic link"
    if out.exists():
        if not out.is_dir():
            return f"{key}={str(out)!r} exists and is not a directory"
        if not os.access(out, os.W_OK | os.X_OK):
            return f"{key}={str(out)!r} is not writable (read-only file system or permissions)"
        return None
    parent = out.absolute().parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        return f"{key}={str(out)!r} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{key}={str(out)!r} cannot be created: {parent} is not writable (read-only file system or permissions)"
    return None


def _wrong_kind(out: Path) -> str | None:
    """Why a name lbfl writes in ``out`` cannot be written: something other than a regular file (or a
    link, which the atomic rename replaces) at a file's name, or other than a real directory at
    ``checkpoints/``. Found here, before the run, instead of when the file is written at its end."""
    if not out.is_dir():
        return None
    names = list(ARTIFACTS) + sorted(n for n in os.listdir(out) if _RANK_FILE.fullmatch(n))
    names.append("checkpoints/latest.json")
    ck = out / "checkpoints"
    if os.path.lexists(ck):
        mode = os.lstat(ck).st_mode
        if not stat.S_ISDIR(mode):
            return (f"run.out_dir={str(out)!r}: checkpoints is {kind(mode)}, not a directory; lbfl writes and "
                    "prunes checkpoints only in a directory of its own, never through a link: move it away")
    for name in names:
        p = out / name
        if not os.path.lexists(p):
            continue
        mode = os.lstat(p).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            return (f"run.out_dir={str(out)!r}: {name} is {kind(mode)}, not a file; lbfl writes a file "
                    "there: move it away")
    return None


@dataclass
class Decision:
    error: str | None = None
    resume_steps: list[int] = field(default_factory=list)  # newest first; empty: a fresh run
    resume_worlds: list[int] = field(default_factory=list)  # the rank count that wrote each of them
    clean: bool = False                                     # delete the earlier run's files first
    note: str | None = None                                 # a one-line warning for the user


def _decide(cfg: Config, world_size: int) -> Decision:
    """Computed on rank 0, before anything is written."""
    out = Path(cfg.run.out_dir)
    bad = _unusable_dir(out, "run.out_dir") or _wrong_kind(out)
    if bad:
        return Decision(error=bad)
    found = existing_run(out)
    mode = cfg.run.resume
    if mode in (True, "auto"):
        metas = checkpoint_metas(out)
        key = f"run.resume={'true' if mode is True else 'auto'}"
        if metas:
            # the federated layer's checkpoints hold client states by client, not by rank (fl/resume.py)
            any_world = cfg.fl.clients > 0 and cfg.sync.mode == "fedavg"
            if metas[0]["world_size"] != world_size and not any_world:
                return Decision(error=f"{key}: the checkpoint was written by {metas[0]['world_size']} ranks, "
                                      f"this job has {world_size}")
            if metas[0]["step"] > cfg.train.steps:
                return Decision(error=f"{key}: train.steps={cfg.train.steps} is below the checkpoint's step "
                                      f"{metas[0]['step']} in {cfg.run.out_dir!r}; set train.steps >= "
                                      f"{metas[0]['step']} to continue it, or run.overwrite=true to start again")
            changed = changed_keys(metas[0].get("config") or saved_config(out), cfg)
            if changed:
                return Decision(error=f"{key}: {', '.join(changed)} differ from the run being resumed "
                                      f"(only {', '.join(sorted(RESUME_MAY_CHANGE))} may change)")
            damaged = [r for r in (check_rank_file(f) for f in sorted(out.glob("rank*.h5"))) if r]
            if damaged:  # reported here, once, instead of each rank hanging or failing on its own file
                return Decision(error=f"{key}: damaged rank file in {cfg.run.out_dir}: {damaged[0]}; "
                                      "move it away to resume without its rows")
            usable = [m for m in metas if any_world or m["world_size"] == world_size]
            return Decision(resume_steps=[m["step"] for m in usable], resume_worlds=[m["world_size"] for m in usable])
        if mode is True:
            return Decision(error=f"run.resume=true but run.out_dir={cfg.run.out_dir!r} holds no checkpoint "
                                  "(set run.checkpoint_every to write them)")
        if found:  # auto, a run without any checkpoint: restart it only if it is this config, unfinished
            saved = saved_config(out)
            if saved is None or changed_keys(saved, cfg) or (out / "summary.json").exists():
                return Decision(error=f"run.resume=auto: run.out_dir={cfg.run.out_dir!r} holds a run "
                                      f"({', '.join(found[:4])}) with no checkpoint to resume; "
                                      "set run.overwrite=true to replace it")
            return Decision(clean=True, note=f"run.resume=auto: {cfg.run.out_dir} holds an unfinished run "
                                             "of this config without a checkpoint; starting it again")
        return Decision()
    if found and not cfg.run.overwrite:
        return Decision(error=f"run.out_dir={cfg.run.out_dir!r} already holds a run ({', '.join(found[:4])}); "
                              "set run.resume=auto to continue it or run.overwrite=true to replace it")
    if found and saved_config(out) is None:
        return Decision(error=f"run.overwrite=true: run.out_dir={cfg.run.out_dir!r} has no config.toml written "
                              "by lbfl, so its files are not deleted; choose another run.out_dir")
    return Decision(clean=bool(found))


def _lock(out: Path) -> str | None:
    """Take the run directory's lock (rank 0, until the process ends); an error line if another job
    holds it. File systems without flock support (some Lustre mounts) get a warning and no lock."""
    global _lock_fd
    if _lock_fd is not None:
        return None
    # O_NONBLOCK: a FIFO planted at the name must not block the open; 0o666: the umask decides
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        return f"run.out_dir={str(out)!r}: {LOCK_NAME} is {kind(mode)}, not a lock file: move it away"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # the holder's own line, but anyone who can write the file may have put escapes in it
            holder = printable(os.pread(fd, 200, 0).decode(errors="replace").strip()) or "unknown"
            os.close(fd)
            return (f"run.out_dir={str(out)!r} is in use by another job ({holder}); two jobs must not "
                    "write one run directory")
        print(f"lbfl: warning: cannot lock {out / LOCK_NAME} ({e.strerror}); make sure no other job "
              "writes this run directory", file=sys.stderr, flush=True)
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    job = printable(os.environ.get("SLURM_JOB_ID", ""))[:64]
    os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()}" + (f", Slurm job {job}" if job else "")
                   + f", since {time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
    _lock_fd = fd
    return None


def release_lock() -> None:
    global _lock_fd
    if _lock_fd is not None:
        os.close(_lock_fd)
        _lock_fd = None


def _decide_and_lock(cfg: Config, world_size: int) -> Decision:
    try:  # an unreadable directory, a name too long: one line on every rank, not a traceback on rank 0
        d = _decide(cfg, world_size)
        if d.error:
            return d
        out = Path(cfg.run.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        err = _lock(out)
        if err:
            return Decision(error=err)
        d = _decide(cfg, world_size)  # again under the lock: another job may have finished in between
    except OSError as e:
        release_lock()
        return Decision(error=f"run.out_dir={cfg.run.out_dir!r}: {e.strerror or e}"
                              + (f" ({printable(e.filename)})" if e.filename else ""))
    if d.error:
        release_lock()
    return d


def prepare_run_dir(cfg: Config, comm) -> Decision:
    """Collective. Validate the run directory against resume/overwrite and lock it (nothing else is
    written yet). Raises ConfigError on every rank."""
    d = _decide_and_lock(cfg, comm.world_size) if comm.rank == 0 else None
    d = comm.bcast_obj(d, root=0)
    if d.error:
        raise ConfigError(d.error)
    if d.note and comm.rank == 0:
        print(f"lbfl: warning: {printable(d.note)}", file=sys.stderr, flush=True)
    return d


def commit_run_dir(cfg: Config, comm, d: Decision, fresh: bool) -> None:
    """Collective, after a resume's checkpoint loaded: clean an earlier run when starting fresh over it,
    and write config.toml."""
    if comm.rank == 0:
        out = Path(cfg.run.out_dir)
        if fresh and d.clean:
            remove_owned(out)
        write_text_atomic(out / "config.toml", CONFIG_HEADER + cfg.to_toml())
    comm.barrier()
