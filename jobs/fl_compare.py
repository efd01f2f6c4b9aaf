#!/usr/bin/env python3
"""Pairwise differences of final test accuracy between configs of a seeded grid, from the run
directories run_grid.sh writes (<root>/<config>/seed<S>/summary.json; completed runs only).

    python jobs/fl_compare.py runs/niid scaffold_dir05:fedavg_dir05 fedprox_dir05:fedavg_dir05

For each A:B: mean(A) - mean(B), Welch's t (the difference over sqrt(s_A^2/n_A + s_B^2/n_B), sample
variances), and the difference paired by seed (mean +- sample std over the seeds both have, and its
95 % t interval, lbfl_mpi.analysis.paired), which removes what a seed shares between configs (the
partition and the initial model).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from lbfl_mpi.analysis.paired import paired_ci


def final_accs(root: Path, config: str) -> dict[str, float]:
    out = {}
    for s in sorted((root / config).glob("seed*/summary.json")):
        d = json.loads(s.read_text())
        if d.get("outcome") == "completed":
            out[s.parent.name] = float(d["final_test_acc"])
    return out


def compare(a: dict[str, float], b: dict[str, float]) -> dict:
    xa, xb = list(a.values()), list(b.values())
    diff = statistics.mean(xa) - statistics.mean(xb)
    se = math.sqrt(statistics.variance(xa) / len(xa) + statistics.variance(xb) / len(xb)) \
        if len(xa) > 1 and len(xb) > 1 else math.nan
    both = [k for k in a if k in b]
    paired = [a[k] - b[k] for k in both]
    _, lo, hi = paired_ci([a[k] for k in both], [b[k] for k in both]) if both else (math.nan, math.nan, math.nan)
    return {"diff": diff, "welch_t": diff / se if se > 0 else math.nan,
            "paired_mean": statistics.mean(paired) if paired else math.nan,
            "paired_std": statistics.stdev(paired) if len(paired) > 1 else math.nan, "paired_n": len(paired),
            "paired_ci": (lo, hi)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("pairs", nargs="+", metavar="A:B")
    args = ap.parse_args(argv)
    for pair in args.pairs:
        if pair.count(":") != 1:
            ap.error(f"{pair}: not of the form A:B")
        a, b = pair.split(":")
        ra, rb = final_accs(args.root, a), final_accs(args.root, b)
        if not ra or not rb:
            ap.error(f"{pair}: no completed run of {a if not ra else b} under {args.root}")
        c = compare(ra, rb)
        print(f"{a} - {b}: {c['diff']:+.4f} (Welch t {c['welch_t']:+.2f}); paired by seed "
              f"{c['paired_mean']:+.4f} +- {c['paired_std']:.4f} (n={c['paired_n']}), 95 % CI "
              f"[{c['paired_ci'][0]:+.4f}, {c['paired_ci'][1]:+.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
