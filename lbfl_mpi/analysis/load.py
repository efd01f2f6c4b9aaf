"""Read a run directory: summary.json, config.toml and every rank's HDF5 groups.

Every file is checked before it is used, and anything unreadable becomes an :class:`AnalysisError`
whose message is ``<path>: <reason>`` on one line: a damaged run directory (a truncated copy, a quota
hit, a half-written summary) must give a clear error, never a traceback or a hang.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..telemetry import read_group
from ..telemetry.open_checked import open_rank_bounded as _open_rank
from ..telemetry.validate import BadFile, check_rank_file

CONFIG_TABLES = ("run", "data", "model", "train", "sync", "scaling", "compress", "batching", "telemetry")


class AnalysisError(ValueError):
    pass


@dataclass
class RankData:
    rank: int
    attrs: dict
    steps: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]


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
    if not path.exists():
        return {}
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read ({getattr(e, 'strerror', None) or _first_line(e)})") from None
    except tomllib.TOMLDecodeError as e:
        raise _bad(path, f"invalid TOML ({_first_line(e)})") from None
    for key in CONFIG_TABLES:
        if key in config and not isinstance(config[key], dict):
            raise _bad(path, f"invalid config ([{key}] is not a table)")
    return config


def read_summary(path: Path) -> dict | None:
    """summary.json as a dict, None when absent (a killed, preempted or running job)."""
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_bytes())  # NaN is accepted: older runs wrote it
    except OSError as e:
        raise _bad(path, f"cannot read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _bad(path, f"invalid JSON ({_first_line(e)})") from None
    if not isinstance(summary, dict):
        raise _bad(path, "invalid summary (not a JSON object)")
    return summary


def read_rank(path: Path, index: int) -> RankData:
    """One rank file's attributes and ``steps``/``eval`` groups."""
    reason = check_rank_file(path)
    if reason is not None:
        raise _bad(path, reason)
    try:
        with _open_rank(path) as h:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h.attrs.items()}
            steps, ev = read_group(h, "steps"), read_group(h, "eval")
    except BadFile as e:
        raise _bad(path, str(e)) from None
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
        raise _bad(path, f"unreadable HDF5 file ({_first_line(e)})") from None
    rank = attrs.get("rank", index)
    return RankData(rank=int(rank) if isinstance(rank, (int, np.integer)) else index, attrs=attrs,
                    steps=steps, eval=ev)


def load_run(path: str | Path) -> RunData:
    p = Path(path)
    files = sorted(p.glob("rank*.h5")) if p.is_dir() else []
    if not files:
        raise _bad(p, "not a run directory (no rank*.h5 files)")
    config = read_config(p / "config.toml")
    summary = read_summary(p / "summary.json")
    name = (summary or {}).get("name") or config.get("run", {}).get("name") or p.name
    run = RunData(path=p, name=str(name), config=config, summary=summary)
    run.ranks = sorted((read_rank(f, i) for i, f in enumerate(files)), key=lambda r: r.rank)
    return run
