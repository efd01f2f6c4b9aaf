"""Read a run directory: summary.json, config.toml and every rank's HDF5 groups.

Every file is checked before it is used, and anything unreadable becomes an :class:`AnalysisError`
whose message is ``<path>: <reason>`` on one line: a damaged run directory (a truncated copy, a quota
hit, a half-written summary) must give a clear error, never a traceback or a hang. Files are opened
as regular files only (a FIFO or device at a name is an error, never a blocked read, files.py); the
config's known keys must have their schema's types; a rank file's columns must fit in the file's size
(a crafted header claiming 10^12 rows is refused, not allocated); the run's name is made printable.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config.fields import TYPE_OK, TYPE_WORDS, field_type, shown
from ..config.schema import sections
from ..files import printable, read_bytes
from ..telemetry import read_group
from ..telemetry.open_checked import open_rank_bounded as _open_rank
from ..telemetry.validate import BadFile, check_rank_file

CONFIG_TABLES = ("run", "data", "model", "train", "sync", "scaling", "compress", "batching", "telemetry")
TEXT_MAX = 64 * 2**20  # config.toml and summary.json are kilobytes


class AnalysisError(ValueError):
    pass


@dataclass
class RankData:
    rank: int
    attrs: dict
    steps: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    clients: dict[str, np.ndarray] = field(default_factory=dict)  # the federated layer's groups
    rounds: dict[str, np.ndarray] = field(default_factory=dict)


def as_float(x) -> float:
    """``x`` as a float, NaN when absent: strict JSON writes non-finite values as null."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


@dataclass
class RunData:
    path: Path
    name: str
    config: dict
    summary: dict | None
    ranks: list[RankData] = field(default_factory=list)

    def eval_curve(self) -> dict[str, np.ndarray]:
        """Test metrics over steps (identical on every rank; taken from rank 0)."""
        return self.ranks[0].eval if self.ranks else {}

    def monitored(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(steps, accuracy, "val" or "test") of the evaluations during training: the validation
        split's when the run has one (data.val_fraction; its test set is measured once, at the end),
        else the test set's."""
        ev = self.eval_curve()
        steps = ev.get("step", np.array([], np.int64))
        val = ev.get("val_acc")
        if val is not None and np.isfinite(val).any():
            return steps, val, "val"
        return steps, ev.get("test_acc", np.array([])), "test"

    def accuracy(self) -> tuple[float, float]:
        """(final, best) test accuracy: from summary.json, else from the eval log (a killed run, or a
        stopped one whose summary holds null)."""
        s = self.summary or {}
        final, best = as_float(s.get("final_test_acc")), as_float(s.get("best_test_acc"))
        if not (math.isnan(final) or math.isnan(best)):
            return final, best
        acc = self.eval_curve().get("test_acc", np.array([]))
        acc = acc[np.isfinite(acc)] if acc.size else acc
        if acc.size == 0:
            return float("nan"), float("nan")
        return float(acc[-1]), float(acc.max())


def _bad(path: Path, reason: str) -> AnalysisError:
    return AnalysisError(f"{path}: {reason}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_config(path: Path) -> dict:
    """config.toml as a dict ({} when absent); its sections must be tables."""
    if not os.path.lexists(path):
        return {}
    try:
        config = tomllib.loads(read_bytes(path, TEXT_MAX).decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read ({getattr(e, 'strerror', None) or _first_line(e)})") from None
    except tomllib.TOMLDecodeError as e:
        raise _bad(path, f"invalid TOML ({_first_line(e)})") from None
    for key in set(CONFIG_TABLES) | set(sections()):
        if key in config and not isinstance(config[key], dict):
            raise _bad(path, f"invalid config ([{key}] is not a table)")
    bad = _mistyped(config)
    if bad:
        raise _bad(path, f"invalid config ({bad})")
    return config


def _mistyped(config: dict) -> str | None:
    """The first known key whose value has the wrong type for its field (list elements included);
    keys this version does not know are left alone (a newer or older run)."""
    for sec, cls in sections().items():
        table = config.get(sec) or {}
        for f in dataclasses.fields(cls):
            if f.name not in table:
                continue
            v, typ, item = table[f.name], field_type(f), f.metadata.get("item")
            if not TYPE_OK[typ](v):
                return f"{sec}.{f.name}: expected {TYPE_WORDS.get(typ, typ)}, got {shown(v)}"
            if typ == "list" and item and not all(TYPE_OK[item](x) for x in v):
                return f"{sec}.{f.name}: expected a list of {item}, got {shown(v)}"
    return None


def read_summary(path: Path) -> dict | None:
    """summary.json as a dict, None when absent (a killed, preempted or running job)."""
    if not os.path.lexists(path):
        return None
    try:
        summary = json.loads(read_bytes(path, TEXT_MAX))  # NaN is accepted: older runs wrote it
    except OSError as e:
        raise _bad(path, f"cannot read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _bad(path, f"invalid JSON ({_first_line(e)})") from None
    if not isinstance(summary, dict):
        raise _bad(path, "invalid summary (not a JSON object)")
    return summary


def read_rank(path: Path, index: int) -> RankData:
    """One rank file's attributes and ``steps``/``eval`` groups (and ``clients``/``rounds`` where the
    federated layer wrote them)."""
    reason = check_rank_file(path)
    if reason is not None:
        raise _bad(path, reason)
    limit = 2 * os.path.getsize(path) + 2**26  # unwritten rows of a killed writer's last resize: slack
    try:
        with _open_rank(path) as h:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h.attrs.items()}
            steps, ev = read_group(h, "steps", max_bytes=limit), read_group(h, "eval", max_bytes=limit)
            clients, rounds = read_group(h, "clients", max_bytes=limit), read_group(h, "rounds", max_bytes=limit)
    except BadFile as e:
        raise _bad(path, str(e)) from None
    except (OSError, KeyError, IndexError, RuntimeError, ValueError, TypeError) as e:
        raise _bad(path, f"unreadable HDF5 file ({_first_line(e)})") from None
    rank = attrs.get("rank", index)
    return RankData(rank=int(rank) if isinstance(rank, (int, np.integer)) else index, attrs=attrs,
                    steps=steps, eval=ev, clients=clients, rounds=rounds)


def read_run(path: str | Path) -> RunData:
    p = Path(path)
    files = sorted(p.glob("rank*.h5")) if p.is_dir() else []
    if not files:
        raise _bad(p, "not a run directory (no rank*.h5 files)")
    config = read_config(p / "config.toml")
    summary = read_summary(p / "summary.json")
    name = (summary or {}).get("name") or config.get("run", {}).get("name") or p.name
    run = RunData(path=p, name=printable(name), config=config, summary=summary)
    run.ranks = sorted((read_rank(f, i) for i, f in enumerate(files)), key=lambda r: r.rank)
    return run


RUN_SEARCH_DEPTH = 3  # levels below a directory given to `lbfl analyze` that are searched for runs
_LISTED = 8           # entries named in the error about a directory that holds no run


def is_run_dir(p: Path) -> bool:
    """A run directory holds rank*.h5 files (read_run then checks each)."""
    return p.is_dir() and any(p.glob("rank*.h5"))


def _holds(p: Path) -> str:
    """What directory ``p`` holds, for an error message: its first entries, directories marked '/'."""
    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError as e:
        return f"cannot be listed ({e.strerror or e})"
    if not entries:
        return "it is empty"
    names = [printable(e.name) + ("/" if e.is_dir(follow_symlinks=False) else "") for e in entries[:_LISTED]]
    more = f", ... ({len(entries)} entries)" if len(entries) > _LISTED else ""
    return f"it holds {', '.join(names)}{more}"


def find_runs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a run directory, else the run directories up to RUN_SEARCH_DEPTH
    levels below it, in path order. A run directory's own sub-directories (checkpoints/) are not
    searched, and a symbolic link counts only when it points at a run directory (it is not searched
    further). Raises AnalysisError naming what ``path`` holds when there is no run."""
    p = Path(path)
    if is_run_dir(p):
        return [p]
    if not p.exists():
        raise _bad(p, "not a run directory (no such file or directory)")
    if not p.is_dir():
        raise _bad(p, "not a run directory (a file, not a directory)")
    found: list[Path] = []
    for top, dirs, _ in os.walk(p):
        depth = len(Path(top).relative_to(p).parts)
        descend = []
        for d in sorted(dirs):
            child = Path(top) / d
            if is_run_dir(child):
                found.append(child)
            elif not child.is_symlink() and depth + 1 < RUN_SEARCH_DEPTH:
                descend.append(d)
        dirs[:] = descend
    if not found:
        raise _bad(p, f"not a run directory (no rank*.h5 files) and no run directory within {RUN_SEARCH_DEPTH} "
                      f"levels below it; {_holds(p)}")
    return sorted(found)


def expand_run_dirs(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Every argument of `lbfl analyze` replaced by the runs it holds (find_runs), and one note per
    argument that was a directory of runs rather than a run."""
    out, notes = [], []
    for arg in paths:
        runs = find_runs(arg)
        if runs != [Path(arg)]:
            shown_runs = ", ".join(printable(r) for r in runs[:_LISTED])
            more = f", ... ({len(runs)} in all)" if len(runs) > _LISTED else ""
            notes.append(f"{printable(arg)} holds {len(runs)} run director{'y' if len(runs) == 1 else 'ies'}; "
                         f"analysing each: {shown_runs}{more}")
        out += runs
    return out, notes
