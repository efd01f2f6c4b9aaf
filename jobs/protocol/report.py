"""The protocol's report (jobs/protocol/run.py --stage report): the grid, the final runs, and the
paired differences in test accuracy against each baseline with their 95 % t intervals.

Per final run it reads summary.json: ``final_test_acc`` (the test set, measured once at the end when
data.val_fraction holds a validation split out), ``final_val_acc``, ``final_train_acc`` and
``final_sharpness`` (train.eval_train_samples, train.eval_sharpness_iters) and ``step_time_s`` (the
training time, evaluation excluded); and from rank 0's file the medians of the ``noise_scale`` column
(B_simple, McCandlish et al. 2018) over the first and the second half of the steps, shown as
"early / late": the simple noise scale grows as the loss falls, and B above it gains little per step.
A run that did not complete is listed with its outcome and its seed is left out of every pair it
belongs to. The completed final runs are also grouped by rank 0's ``cpu`` attribute (the host's CPU
model, torch's vector ISA and thread count): float results depend on the ISA torch's kernels
dispatch to, so two runs of one config and seed on differing hosts need not agree.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
from run import Spec, choose, chosen_overrides, final_dir, summary, tune_dir  # jobs/protocol/ on sys.path

from lbfl_mpi.analysis.paired import mean_std, paired_ci, verdict
from lbfl_mpi.telemetry import open_rank_file, read_group

READS = ("final_test_acc", "final_val_acc", "final_train_acc", "final_sharpness", "step_time_s")


def rank0(run: Path) -> dict:
    """What the report reads from rank 0's file, opened once: ``noise_early`` and ``noise_late``,
    the median B_simple over the first and over the second half of the steps (each NaN where it was
    not estimated: no rank file, no column, or no finite value in that half), and ``host``, the
    ``cpu`` attribute (None where the file or the attribute is absent: rank files written before
    the attribute existed)."""
    out = {"noise_early": math.nan, "noise_late": math.nan, "host": None}
    f = run / "rank0000.h5"
    if not f.is_file():
        return out
    with open_rank_file(f) as h:
        col = read_group(h, "steps").get("noise_scale")
        cpu = h.attrs.get("cpu")
    if cpu is not None:
        out["host"] = cpu.decode() if isinstance(cpu, bytes) else str(cpu)
    if col is not None:
        col = np.asarray(col, dtype=np.float64)
        halves = [col[:len(col) // 2], col[len(col) // 2:]]
        out["noise_early"], out["noise_late"] = (float(np.median(x[np.isfinite(x)])) if np.isfinite(x).any()
                                                 else math.nan for x in halves)
    return out


def _reading(s: dict, key: str) -> float:
    """summary.json's ``key`` as a float; NaN where the run did not measure it (absent, or null as
    ``final_sharpness`` is without train.eval_sharpness_iters)."""
    v = s.get(key)
    return math.nan if v is None else float(v)


def finals(spec: Spec, root: Path, arm: str) -> dict[int, dict]:
    """seed -> the readings of that completed final run; seeds whose run did not complete map to
    {"outcome": ...}; missing runs are absent."""
    out = {}
    for seed in spec.seeds:
        run = final_dir(root, arm, seed)
        s = summary(run)
        if s is None:
            continue
        if s.get("outcome") != "completed":
            out[seed] = {"outcome": s.get("outcome")}
            continue
        out[seed] = {k: _reading(s, k) for k in READS} | {"outcome": "completed"} | rank0(run)
    return out


def _vals(runs: dict[int, dict], key: str) -> list[float]:
    return [r[key] for r in runs.values() if r["outcome"] == "completed" and not math.isnan(r[key])]


def grid_table(spec: Spec, root: Path) -> list[str]:
    if not any(a.key for a in spec.arms.values()):
        return ["## Grid", "", "None: every arm runs as set (no `grid` in the spec)."]
    out = [f"## Grid: mean `{spec.select}` over tune seeds {spec.tune_seeds}", "",
           "| arm | key | value | " + spec.select + " | chosen |", "|---|---|---|---|---|"]
    for arm in spec.arms.values():
        if not arm.key:
            how = (f"train.lr of {arm.lr_from}" if arm.lr_from else
                   f"lr x mean scale factor of {arm.lr_matched}" if arm.lr_matched else "no grid")
            out.append(f"| {arm.name} | - | - | - | {how} |")
            continue
        c = choose(spec, root, arm)
        for i, (label, v) in enumerate(zip(arm.labels, arm.values)):
            ss = [summary(tune_dir(root, arm, label, s)) for s in spec.tune_seeds]
            done = [s for s in ss if s is not None]
            scores = [float(s.get(spec.select, math.nan)) if s.get("outcome") == "completed" else math.nan
                      for s in done]
            shown = mean_std(scores) if done and all(x == x for x in scores) else \
                (f"{len(done)}/{len(ss)} done" if len(done) < len(ss) else
                 ", ".join(s.get("outcome", "?") for s in done))
            mark = "**yes**" if c is not None and c[0] == i else ""
            value = label if isinstance(v, str) or label == f"{v:.4g}" else f"{label} ({v:.4g})"
            out.append(f"| {arm.name} | {arm.key} | {value} | {shown} | {mark} |")
    trials = {a.name: len(a.values) * len(spec.tune_seeds) for a in spec.arms.values() if a.key}
    out += ["", "Trials per tuned arm: " + ", ".join(f"{k} {v}" for k, v in trials.items()) +
            ("" if len(set(trials.values())) <= 1 else " (**unequal**)")]
    return out


def final_table(spec: Spec, root: Path, every: dict[str, dict[int, dict]]) -> list[str]:
    """``every``: arm -> its finals(), read once for both tables. The column "time vs <baseline>" (mean
    training time over the first baseline's) is there only when the spec names a baseline."""
    base = spec.baselines[0] if spec.baselines else None
    base_time = _vals(every[base], "step_time_s") if base else []
    cols = ["arm", "setting", "n", "test acc", "val acc", "train acc", "train - test", "sharpness",
            "B_simple early / late", "train time (s)"] + ([f"time vs {base}"] if base else []) + ["not completed"]
    out = ["## Final runs: mean +- std over seeds", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for arm in spec.arms.values():
        runs = every[arm.name]
        ov = chosen_overrides(spec, root, arm)  # None while what it is chosen from is unfinished
        setting = "not chosen yet" if ov is None else ", ".join(o for o in ov if o not in arm.overrides) or "as set"
        done = {s: r for s, r in runs.items() if r["outcome"] == "completed"}
        gap = [r["final_train_acc"] - r["final_test_acc"] for r in done.values()
               if not math.isnan(r["final_train_acc"])]
        times = _vals(runs, "step_time_s")
        ratio = f"{statistics.mean(times) / statistics.mean(base_time):.2f}x" if times and base_time else "-"
        failed = ", ".join(f"seed {s}: {r['outcome']}" for s, r in runs.items() if r["outcome"] != "completed")
        cells = [arm.name, setting, str(len(done)), mean_std(_vals(runs, "final_test_acc")),
                 mean_std(_vals(runs, "final_val_acc")), mean_std(_vals(runs, "final_train_acc")), mean_std(gap),
                 mean_std(_vals(runs, "final_sharpness")),
                 f"{_fmt(_vals(runs, 'noise_early'))} / {_fmt(_vals(runs, 'noise_late'))}", _fmt(times)]
        out.append("| " + " | ".join(cells + ([ratio] if base else []) + [failed or "-"]) + " |")
    return out


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.1f}" + (f" +- {statistics.stdev(xs):.1f}" if len(xs) > 1 else "")


def paired_table(spec: Spec, every: dict[str, dict[int, dict]]) -> list[str]:
    """Every arm against each baseline, then the spec's ``compare`` pairs (arm, reference)."""
    out = ["## Paired differences in test accuracy (arm - baseline, same seeds, 95 % t interval)", "",
           "| arm | baseline | pairs | mean difference | 95 % CI | verdict (arm above baseline) |",
           "|---|---|---|---|---|---|"]
    pairs = [(arm, b) for b in spec.baselines for arm in spec.arms if arm != b]
    pairs += [c for c in spec.compare if c not in pairs]
    for name, b in pairs:
        ra, rb = every[name], every[b]
        seeds = [s for s in spec.seeds if s in ra and s in rb and ra[s]["outcome"] == rb[s]["outcome"] == "completed"]
        if not seeds:
            out.append(f"| {name} | {b} | 0 | - | - | - |")
            continue
        m, lo, hi = paired_ci([ra[s]["final_test_acc"] for s in seeds], [rb[s]["final_test_acc"] for s in seeds])
        out.append(f"| {name} | {b} | {len(seeds)} | {m:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {verdict(lo, hi)} |")
    return out


def host_lines(every: dict[str, dict[int, dict]]) -> list[str]:
    """The completed final runs by host (rank 0's ``cpu`` attribute, "not recorded" where absent):
    one line when they share one, else a row per host, the most runs first."""
    groups: dict[str, list[str]] = {}
    for arm, runs in every.items():
        for seed, r in sorted(runs.items()):
            if r["outcome"] == "completed":
                groups.setdefault(r["host"] or "not recorded", []).append(f"{arm} {seed}")
    if not groups:
        return []
    out = ["", "## Hosts of the final runs (rank 0's `cpu` attribute)", ""]
    if len(groups) == 1:
        ((name, runs),) = groups.items()
        return out + [f"Every completed final run ({len(runs)}): {name}."]
    out += ["| cpu | runs | arm seed |", "|---|---|---|"]
    out += [f"| {name} | {len(runs)} | {', '.join(runs)} |"
            for name, runs in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))]
    return out + ["", "Float results depend on the host (its vector ISA at least): a pair whose runs differ in host "
                  "differs by the host as well as by the arm."]


def report(spec: Spec, root: Path) -> str:
    head = [f"# Protocol `{spec.name}`", "",
            f"Base config `{spec.config}`, {spec.ranks} rank(s); grid seeds {spec.tune_seeds}, chosen by "
            f"`{spec.select}`; final seeds {spec.seeds} (paired across arms). Run dirs: `{root}`.", ""]
    every = {arm: finals(spec, root, arm) for arm in spec.arms}  # each run read once for all the tables
    return "\n".join(head + grid_table(spec, root) + [""] + final_table(spec, root, every) + [""] +
                     paired_table(spec, every) + host_lines(every)) + "\n"
