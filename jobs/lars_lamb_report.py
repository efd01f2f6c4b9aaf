"""Accuracy of the jobs/lars_lamb grid: LARS and LAMB against SGD with the linear scaling rule.

    python jobs/lars_lamb_report.py runs/lars_lamb [--save DIR]

Reads runs/lars_lamb/tune/<opt>_lr<lr>_b4096 (seed 0, the lr search) and
runs/lars_lamb/final/<opt>_b<B>/seedS (the tuned lr, B in {4096, 8192}, 3 seeds), or the same layout
saved by ``--save DIR`` (each run's config.toml, summary.json and curve.json, the numbers read from
its rank-0 file), so that the report can be made again without the rank files.

Per arm, mean +- std over seeds of the final test accuracy, the best test accuracy over the
evaluations, and the final training loss (mean of rank 0's last 5 steps). Each comparison with SGD at
the same B is a paired difference over seeds (same seed, same data order and initial model) with a
95 % t confidence interval; "held" means the interval lies above 0, "not held" says whether the
interval includes 0 (not shown) or lies below it (the reverse holds).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from tta_report import ms, save_run  # jobs/ is on sys.path when this script runs

from lbfl_mpi.analysis.paired import paired_ci, verdict
from lbfl_mpi.telemetry import open_rank_file, read_group

OPTS = ("sgd", "lars", "lamb")
BATCHES = (4096, 8192)


def load(run: Path) -> dict | None:
    """Final and best test accuracy, final training loss and the eval curve of one completed run."""
    s = run / "summary.json"
    summ = json.loads(s.read_text()) if s.exists() else {}
    if summ.get("outcome") != "completed":
        return None
    if (run / "rank0000.h5").exists():
        with open_rank_file(run / "rank0000.h5") as h:
            st, ev = read_group(h, "steps"), read_group(h, "eval")
        curve = {"step": np.asarray(ev["step"]).tolist(), "test_acc": np.asarray(ev["test_acc"]).tolist(),
                 "train_loss_end": float(np.mean(np.asarray(st["loss"], np.float64)[-5:]))}
    else:
        curve = json.loads((run / "curve.json").read_text())
    return {"final": summ["final_test_acc"], "best": max(curve["test_acc"]),
            "loss": curve["train_loss_end"], "steps": summ["steps"], "curve": curve}


def tune_table(root: Path, keep: Path | None) -> list[str]:
    out = ["## Learning-rate search (B = 4096, seed 0)", "",
           "| optimizer | lr | final acc | best acc | final train loss |", "|---|---|---|---|---|"]
    for opt in OPTS:
        found = []
        for d in (root / "tune").glob(f"{opt}_lr*_b4096"):
            r = load(d)
            if r is not None:
                found.append((float(re.match(rf"{opt}_lr(.+)_b4096", d.name).group(1)), r, d))
        if not found:
            continue
        found.sort(key=lambda t: t[0])
        chosen = max(found, key=lambda t: t[1]["final"])[0]
        for lr, r, d in found:
            if keep is not None:
                save_run(d, keep / "tune" / d.name, r["curve"])
            mark = " (chosen)" if lr == chosen else ""
            out.append(f"| {opt} | {lr:g}{mark} | {r['final']:.4f} | {r['best']:.4f} | {r['loss']:.4f} |")
        if chosen in (found[0][0], found[-1][0]):
            out.append(f"| {opt} | note: the chosen lr is at the edge of the searched range | | | |")
    return out + [""] if len(out) > 4 else []


def final_tables(root: Path, keep: Path | None) -> list[str]:
    arms: dict[tuple[str, int], dict[int, dict]] = {}
    for opt in OPTS:
        for b in BATCHES:
            for seed in sorted((root / "final" / f"{opt}_b{b}").glob("seed*")):
                r = load(seed)
                if r is not None:
                    arms.setdefault((opt, b), {})[int(seed.name[4:])] = r
                    if keep is not None:
                        save_run(seed, keep / "final" / f"{opt}_b{b}" / seed.name, r["curve"])
    if not arms:
        return []
    out = ["## Equal epochs, tuned lr (mean ± std over seeds)", "",
           "| optimizer | B | steps | seeds | final acc | best acc | final train loss |",
           "|---|---|---|---|---|---|---|"]
    for (opt, b), runs in arms.items():
        rs = list(runs.values())
        out.append(f"| {opt} | {b} | {rs[0]['steps']} | {len(rs)} | {ms([r['final'] for r in rs], '.4f')} | "
                   f"{ms([r['best'] for r in rs], '.4f')} | {ms([r['loss'] for r in rs], '.4f')} |")
    out += ["", "## Paired differences in final accuracy (95 % t interval over seeds)", ""]
    for opt in ("lars", "lamb"):
        for b in BATCHES:
            a, s = arms.get((opt, b), {}), arms.get(("sgd", b), {})
            seeds = sorted(set(a) & set(s))
            if not seeds:
                continue
            m, lo, hi = paired_ci([a[k]["final"] for k in seeds], [s[k]["final"] for k in seeds])
            out.append(f"- {opt} better than sgd at B = {b}: {m:+.4f} [{lo:+.4f}, {hi:+.4f}], "
                       f"{len(seeds)} seeds: {verdict(lo, hi)}")
    for opt in ("lars", "lamb"):
        drops = {}
        for o in (opt, "sgd"):
            a, c = arms.get((o, 4096), {}), arms.get((o, 8192), {})
            drops[o] = {k: a[k]["final"] - c[k]["final"] for k in set(a) & set(c)}
        seeds = sorted(set(drops[opt]) & set(drops["sgd"]))
        if not seeds:
            continue
        m, lo, hi = paired_ci([drops["sgd"][k] for k in seeds], [drops[opt][k] for k in seeds])
        out.append(f"- {opt} loses less than sgd from B = 4096 to 8192 (sgd's drop minus {opt}'s): "
                   f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}], {len(seeds)} seeds: {verdict(lo, hi)}")
    return out + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--save", type=Path, help="copy each run's config, summary and curve here")
    args = ap.parse_args()
    lines = tune_table(args.root, args.save) + final_tables(args.root, args.save)
    if not lines:
        sys.exit(f"{args.root}: no completed runs")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
