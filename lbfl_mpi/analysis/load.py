"""Read a run directory: summary.json, config.toml and every rank's HDF5 groups."""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..telemetry import open_rank_file, read_group


class AnalysisError(ValueError):
    pass


@dataclass
class RankData:
    rank: int
    attrs: dict
    steps: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]


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
        """(final, best) test accuracy: from summary.json, else from the eval log of a killed run."""
        if self.summary:
            return self.summary["final_test_acc"], self.summary["best_test_acc"]
        acc = self.eval_curve().get("test_acc", np.array([]))
        if acc.size == 0:
            return float("nan"), float("nan")
        return float(acc[-1]), float(acc.max())


def load_run(path: str | Path) -> RunData:
    p = Path(path)
    files = sorted(p.glob("rank*.h5"))
    if not p.is_dir() or not files:
        raise AnalysisError(f"{str(path)!r} is not a run directory (no rank*.h5 files)")
    cfg_path = p / "config.toml"
    config = tomllib.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    summary_path = p / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    name = (summary or {}).get("name") or config.get("run", {}).get("name") or p.name
    run = RunData(path=p, name=name, config=config, summary=summary)
    for f in files:
        with open_rank_file(f) as h:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h.attrs.items()}
            run.ranks.append(RankData(rank=int(attrs.get("rank", len(run.ranks))), attrs=attrs,
                                      steps=read_group(h, "steps"), eval=read_group(h, "eval")))
    run.ranks.sort(key=lambda r: r.rank)
    return run
