"""Seed groups: runs of one experiment repeated with different ``run.seed``, summarised as mean and
sample standard deviation (ddof=1) over the seeds.

Two runs belong to one group when their resolved configs (``config.toml`` in each run directory) are
equal once the keys in :data:`BOOKKEEPING` are left out: the seed itself, where the run was written
and what it was called, and settings that only decide when files are written or how a job reacts to
a scheduler. Anything that may change what is computed (data, model, optimiser, sync, backend,
precision, emulated slowdowns, ...) keeps runs apart. A run without ``config.toml`` is a group of
its own. A key that a run's config.toml lacks (the run predates the key) counts as the key's default,
which by the project's rule computes what the run computed then: upgrading lbfl_mpi between seeds
does not split a group.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import numpy as np

from .load import RunData, as_float

# keys that cannot change the computation; everything else separates groups (be conservative)
BOOKKEEPING = frozenset({
    "run.seed", "run.out_dir", "run.name", "run.overwrite", "run.resume", "run.checkpoint_every",
    "run.preempt_signals", "run.preempt_check_every", "telemetry.flush_every", "data.root", "dist.timeout_s",
})


def flat(config: dict) -> dict:
    """``{"section.key": value}`` of a two-level config (top-level scalars keep their own name)."""
    out = {}
    for section, table in config.items():
        if isinstance(table, dict):
            out.update({f"{section}.{k}": v for k, v in table.items()})
        else:
            out[section] = table
    return out


@functools.cache
def _defaults() -> dict:
    """``{"section.key": default}`` of every key the schema has now."""
    from ..config.schema import Config

    return flat(Config().to_dict())


def resolved(config: dict) -> dict:
    """:func:`flat` of ``config`` with every key it lacks set to today's default (empty stays empty)."""
    return {**_defaults(), **flat(config)} if config else {}


def config_key(config: dict, drop: frozenset | set = BOOKKEEPING) -> str | None:
    """A canonical string of ``config`` (missing keys at their defaults) without the keys in ``drop``;
    None without a config."""
    if not config:
        return None
    return json.dumps({k: v for k, v in resolved(config).items() if k not in drop}, sort_keys=True, default=str)


def differing(configs: list[dict], drop: frozenset | set = BOOKKEEPING) -> list[str]:
    """Keys (outside ``drop``) whose value is not the same in every config (missing keys at their
    defaults), in sorted order."""
    flats = [resolved(c) for c in configs]
    keys = sorted(set().union(*flats) - set(drop)) if flats else []
    missing = object()
    return [k for k in keys if len({json.dumps(f.get(k, missing), default=str) for f in flats}) > 1]


def disambiguate(labels: list[str], configs: list[dict], drop: frozenset | set = BOOKKEEPING) -> list[str]:
    """Labels made unique: equal labels get the config keys that tell their owners apart, e.g.
    ``base [train.lr=0.1]``, then ``#2``, ``#3`` where even that is not enough."""
    out = list(labels)
    for label in set(labels):
        idx = [i for i, x in enumerate(labels) if x == label]
        if len(idx) < 2:
            continue
        keys = differing([configs[i] for i in idx], drop)
        for i in idx:
            f = resolved(configs[i])
            if keys:
                out[i] = f"{label} [" + ", ".join(f"{k}={f.get(k, '-')}" for k in keys) + "]"
    for label in set(out):
        idx = [i for i, x in enumerate(out) if x == label]
        for n, i in enumerate(idx[1:], start=2):
            out[i] = f"{label} #{n}"
    return out


@dataclass
class SeedGroup:
    label: str
    members: list[int]  # indices into the analysed runs, in the order given


def _label(runs: list[RunData], members: list[int]) -> str:
    """The ``run.name`` every member shares; the names joined by "+" where equal configs were run
    under several names; else the common part of the run directories."""
    names = list(dict.fromkeys(str(runs[i].config.get("run", {}).get("name") or "") for i in members))
    if "" not in names:
        return "+".join(names)
    if len(members) > 1:
        common = os.path.commonpath([os.path.abspath(runs[i].path) for i in members])
        rel = os.path.relpath(common)
        label = common if rel.startswith("..") else rel  # relative where it is under the working dir
        if label not in (".", os.sep):
            return label
    return runs[members[0]].name


def group_seeds(runs: list[RunData]) -> list[SeedGroup]:
    """Runs grouped by their config without :data:`BOOKKEEPING` keys, in order of first appearance."""
    by_key: dict[str, list[int]] = {}
    groups: list[list[int]] = []
    for i, run in enumerate(runs):
        key = config_key(run.config)
        if key is None:
            groups.append([i])
        elif key in by_key:
            by_key[key].append(i)
        else:
            by_key[key] = [i]
            groups.append(by_key[key])
    labels = disambiguate([_label(runs, g) for g in groups], [runs[g[0]].config for g in groups])
    return [SeedGroup(label, g) for label, g in zip(labels, groups)]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than 2 values). A NaN value (a run
    without any evaluation) makes both NaN rather than being dropped silently."""
    x = np.asarray([as_float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan")


def seed_of(run: RunData):
    return run.config.get("run", {}).get("seed")


def per_seed(values, seeds: list) -> tuple[list, list[float]]:
    """(distinct seeds, one value per seed). Runs with the same seed (copies of one run, or equal
    configs under two names) are one sample, not several: their values are averaged first. A run
    without a seed (no config.toml) is a sample of its own."""
    by: dict = {}
    for i, (v, s) in enumerate(zip(values, seeds)):
        by.setdefault(("seed", s) if s is not None else ("run", i), []).append(as_float(v))
    return [k[1] if k[0] == "seed" else None for k in by], [float(np.mean(v)) for v in by.values()]


def summarise(groups: list[SeedGroup], runs: list[RunData], records: list[dict]) -> list[dict]:
    """One dict per group: label, n (distinct seeds), seeds, n_runs, runs and mean/std over the seeds
    (per_seed) of the final and best test accuracy, plus the mean share of dense bytes per sync
    (rank 0, as the comparison table) and wall time."""
    out = []
    for g in groups:
        recs = [records[i] for i in g.members]
        seeds = [seed_of(runs[i]) for i in g.members]

        def stat(values, seeds=seeds):
            return mean_std(per_seed(values, seeds)[1])

        final = stat([r["final_test_acc"] for r in recs])
        best = stat([r["best_test_acc"] for r in recs])
        dense = [r["ranks"][0]["bytes_vs_dense"] if r["ranks"] else float("nan") for r in recs]
        outcomes: dict[str, int] = {}
        for r in recs:
            outcomes[r.get("outcome", "completed")] = outcomes.get(r.get("outcome", "completed"), 0) + 1
        distinct = per_seed(seeds, seeds)[0]
        out.append({"label": g.label, "n": len(distinct), "seeds": distinct, "n_runs": len(recs),
                    "runs": [r["run"] for r in recs], "global_batch": recs[0].get("global_batch"),
                    "final_test_acc_mean": final[0], "final_test_acc_std": final[1],
                    "best_test_acc_mean": best[0], "best_test_acc_std": best[1],
                    "bytes_vs_dense_mean": stat(dense)[0],
                    "wall_time_s_mean": stat([r.get("wall_time_s") for r in recs])[0],
                    "outcomes": outcomes})
    return out


def _num(x: float, fmt: str = ".4f") -> str:
    return "-" if np.isnan(x) else f"{x:{fmt}}"


def format_seed_groups(summaries: list[dict]) -> str:
    """The "mean +- std over seeds" table: one row per group, also for groups of one run."""
    w = max([5] + [len(s["label"]) for s in summaries])
    seeds = [",".join("?" if x is None else str(x) for x in s["seeds"])
             + (f" ({s['n_runs']} runs)" if s["n_runs"] != s["n"] else "") for s in summaries]
    ws = max([5] + [len(x) for x in seeds])
    lines = ["mean +- std over seeds (sample std, ddof=1; '-' with one seed)",
             f"{'group':{w}s} {'n':>3s} {'seeds':{ws}s} {'final_acc':>9s} {'+- std':>7s} {'best_acc':>9s} "
             f"{'+- std':>7s} {'% dense bytes':>13s} {'wall s':>8s}  outcomes"]
    for s, sd in zip(summaries, seeds):
        outcomes = ", ".join(f"{n} {k}" for k, n in s["outcomes"].items())
        lines.append(f"{s['label']:{w}s} {s['n']:3d} {sd:{ws}s} {_num(s['final_test_acc_mean']):>9s} "
                     f"{_num(s['final_test_acc_std']):>7s} {_num(s['best_test_acc_mean']):>9s} "
                     f"{_num(s['best_test_acc_std']):>7s} {_num(100 * s['bytes_vs_dense_mean'], '.2f'):>13s} "
                     f"{_num(as_float(s['wall_time_s_mean']), '.1f'):>8s}  {outcomes}")
    return "\n".join(lines)
