"""Final test accuracy against the global batch B (paper Fig. 3): one series per learning-rate rule.

B is ``global_batch`` of summary.json (what the comparison table shows), else the sum of the ranks'
first-step batches (a run without a summary). A point is a seed group (seeds.py): mean and sample std
over its distinct seeds (runs with the same seed count once, seeds.per_seed).

Series. Seed groups are first clustered by their config without the keys that a batch-size sweep
changes along with B (:data:`SWEEP_KEYS`: batch sizes, lr, the linear scaling rule, warm-up length,
steps and eval interval, so that equal-epoch sweeps form one line) but with "warm-up or not" kept.
Within a cluster, with the peak lr ``eta = train.lr x (B / base_batch if train.scale_lr)``:

- groups sharing eta across >= 2 distinct B form a constant-lr line, labelled ``lr 0.05``;
- groups sharing eta / B across >= 2 distinct B form a scaled-lr line (the linear scaling rule, set
  by ``train.scale_lr`` or by hand), labelled ``lr 0.05 x B/32`` after its smallest-B point;
- any other group is a one-point line labelled by its eta.

So a sweep's anchor run may sit on both a constant and a scaled line, and a control at one B with a
larger lr (e.g. jobs/scaling ``large_lr_x02``) is a point of its own rather than averaged into the
baseline. When two groups of a cluster would share a point (same B and eta), the cluster is split
again by steps, eval interval and warm-up length; groups still sharing a point after that are pooled.
Line labels start with the scaling label (tables.py) and name the config keys that tell clusters
apart, plus ``+ warm-up N``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .load import RunData
from .seeds import (
    BOOKKEEPING,
    SeedGroup,
    config_key,
    differing,
    disambiguate,
    flat,
    group_seeds,
    mean_std,
    per_seed,
    seed_of,
)
from .tables import peak_lr, readings, scaling_label

LENGTH_KEYS = frozenset({"train.steps", "train.eval_every", "train.warmup_steps"})
SWEEP_KEYS = BOOKKEEPING | LENGTH_KEYS | {"train.batch_size", "batching.global_batch", "train.lr",
                                          "train.scale_lr", "train.base_batch"}
# scaling keys already spelled out by scaling_label()
_SHOWN = frozenset({"scaling.method", "scaling.factor", "scaling.threshold", "scaling.polarity",
                    "scaling.small_batch"})


def global_batch(run: RunData) -> int | None:
    gb = (run.summary or {}).get("global_batch")
    if isinstance(gb, int) and not isinstance(gb, bool) and gb > 0:
        return gb
    firsts = [r.steps["batch_size"][0] for r in run.ranks if r.steps.get("batch_size") is not None
              and r.steps["batch_size"].size]
    return int(sum(firsts)) if firsts and len(firsts) == len(run.ranks) else None


def _round(x: float | None):
    return None if x is None else float(f"{x:.6g}")


@dataclass
class _Point:
    group: int  # index into the seed groups
    batch: int
    eta: float | None


@dataclass
class Series:
    label: str
    points: list[dict] = field(default_factory=list)  # sorted by global_batch
    members: list[int] = field(default_factory=list)  # indices of its runs into the analysed runs


def _lines(items: list[_Point]) -> list[tuple[str, list[_Point]]]:
    """The const-lr, scaled-lr and one-point lines of one cluster (see the module docstring)."""
    lines, used = [], set()
    for rule in ("const", "scaled"):
        by: dict = {}
        for p in items:
            if p.eta is not None or rule == "const":
                key = _round(p.eta) if rule == "const" else _round(p.eta / p.batch)
                by.setdefault(key, []).append(p)
        for ps in by.values():
            if len({p.batch for p in ps}) < 2:
                continue
            ps = sorted(ps, key=lambda p: p.batch)
            eta0 = "?" if ps[0].eta is None else f"{ps[0].eta:g}"
            lines.append((f"lr {eta0}" + ("" if rule == "const" else f" x B/{ps[0].batch}"), ps))
            used.update(id(p) for p in ps)
    rest: dict = {}
    for p in items:
        if id(p) not in used:
            rest.setdefault(_round(p.eta), []).append(p)
    lines += [(f"lr {'?' if ps[0].eta is None else f'{ps[0].eta:g}'}", ps) for ps in rest.values()]
    return lines


def _clusters(groups: list[SeedGroup], runs: list[RunData], items: list[_Point]):
    """The points of each cluster: by config without SWEEP_KEYS, split again with the length keys
    where two groups would share a point."""
    def split(ps: list[_Point], drop) -> dict:
        by: dict = {}
        for p in ps:
            cfg = runs[groups[p.group].members[0]].config
            warm = bool(cfg.get("train", {}).get("warmup_steps"))
            key = config_key(cfg, drop)
            by.setdefault((key, warm) if key is not None else ("group", p.group), []).append(p)
        return by

    out = []
    for ps in split(items, SWEEP_KEYS).values():
        clash = len({(p.batch, _round(p.eta)) for p in ps}) < len(ps)
        out += list(split(ps, SWEEP_KEYS - LENGTH_KEYS).values()) if clash else [ps]
    return out


def _cluster_labels(members: list[list[dict]], group_labels: list[str]) -> list[str]:
    """Scaling label, the keys that tell clusters apart (among those constant within each cluster, so
    that a label never names a value only some of its runs have) and ``+ warm-up N`` (N steps; no N
    where the cluster's runs differ in it)."""
    reps = [cfgs[0] for cfgs in members]
    keys = [k for k in differing(reps, SWEEP_KEYS - LENGTH_KEYS) if k not in _SHOWN and k != "train.warmup_steps"]
    labels = []
    for cfgs, glabel in zip(members, group_labels):
        if not cfgs[0]:
            labels.append(glabel)
            continue
        varies, f = set(differing(cfgs, set())), flat(cfgs[0])
        extra = ", ".join(f"{k}={f.get(k, '-')}" for k in keys if k not in varies)
        warm = f.get("train.warmup_steps")
        labels.append(scaling_label(cfgs[0]) + (f" [{extra}]" if extra else "")
                      + (f" + warm-up{'' if 'train.warmup_steps' in varies else f' {warm}'}" if warm else ""))
    return disambiguate(labels, reps, SWEEP_KEYS)


def batch_series(runs: list[RunData], groups: list[SeedGroup] | None = None) -> list[Series]:
    """The Fig. 3 series of ``runs`` (seed groups from seeds.group_seeds unless given)."""
    groups = group_seeds(runs) if groups is None else groups
    items = []
    for gi, g in enumerate(groups):
        run = runs[g.members[0]]
        b = global_batch(run)
        if b is not None:
            items.append(_Point(gi, b, peak_lr(run.config, b)))
    clusters = _clusters(groups, runs, items)
    labels = _cluster_labels([[runs[i].config for p in ps for i in groups[p.group].members] for ps in clusters],
                             [groups[ps[0].group].label for ps in clusters])
    out = []
    for label, ps in zip(labels, clusters):
        for rule, line in _lines(ps):
            s = Series(f"{label}, {rule}")
            by_b: dict[int, list[int]] = {}
            for p in line:
                by_b.setdefault(p.batch, []).extend(groups[p.group].members)
            for b in sorted(by_b):
                members = by_b[b]
                s.members += members
                of = [seed_of(runs[i]) for i in members]
                seeds, acc = per_seed([runs[i].accuracy()[0] for i in members], of)
                mean, std = mean_std(acc)
                _, train = per_seed([readings(runs[i])["last_train_acc"] for i in members], of)
                train_mean, train_std = mean_std(train)
                s.points.append({"global_batch": b, "n": len(seeds), "seeds": seeds,
                                 "runs": [str(runs[i].path) for i in members],
                                 "final_test_acc_mean": mean, "final_test_acc_std": std,
                                 "final_train_acc_mean": train_mean, "final_train_acc_std": train_std})
            out.append(s)
    return out


def batches(series: list[Series]) -> list[int]:
    """The distinct global batches over all series, ascending."""
    return sorted({p["global_batch"] for s in series for p in s.points})


def _cell(p: dict | None) -> str:
    if p is None or np.isnan(p["final_test_acc_mean"]):
        return "-"
    if p["n"] < 2:
        return f"{p['final_test_acc_mean']:.4f}"
    return f"{p['final_test_acc_mean']:.4f}+-{p['final_test_acc_std']:.4f} (n={p['n']})"


def format_batch_table(series: list[Series]) -> str:
    """Rows = series, columns = B: the final test accuracy (mean +- std (n) over seeds)."""
    bs = batches(series)
    cells = [[_cell(next((p for p in s.points if p["global_batch"] == b), None)) for b in bs] for s in series]
    w = max([6] + [len(s.label) for s in series])
    cw = [max(len(f"B={b}"), *(len(row[j]) for row in cells)) for j, b in enumerate(bs)]
    lines = ["final test accuracy by global batch B (mean +- sample std over seeds where n > 1)",
             f"{'series':{w}s}  " + "  ".join(f"{f'B={b}':>{cw[j]}s}" for j, b in enumerate(bs))]
    for s, row in zip(series, cells):
        lines.append(f"{s.label:{w}s}  " + "  ".join(f"{c:>{cw[j]}s}" for j, c in enumerate(row)))
    return "\n".join(lines)
