#!/usr/bin/env python3
"""Table of a federated grid: final test accuracy (mean +- sample std over seeds), bytes per round and
wall time per config, from the run directories run_grid.sh writes (<out_dir>/seed<S>).

    python jobs/fl_table.py runs/niid            # every <config>/seed<S> below it
    python jobs/fl_table.py runs/niid --markdown  # the same as a markdown table

Runs whose summary.json does not say "completed" are listed apart, with their outcome, and left out
of the means. Bytes per round: what rank 0 handed to the round's allreduce (its ``rounds`` rows'
``bytes_sent``), and the clients' summed uplink of the round (``clients`` rows, all ranks).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lbfl_mpi.analysis.paired import mean_std  # noqa: E402
from lbfl_mpi.telemetry import open_rank_file, read_group  # noqa: E402


def run_row(seed_dir: Path) -> dict:
    s = json.loads((seed_dir / "summary.json").read_text())
    row = {"config": seed_dir.parent.name, "seed": seed_dir.name, "outcome": s.get("outcome"),
           "acc": s.get("final_test_acc"), "best": s.get("best_test_acc"), "wall": s.get("wall_time_s"),
           "rounds": s.get("fl_rounds")}
    uplink, exchange = None, None  # None: written by a version without these columns
    for f in sorted(seed_dir.glob("rank*.h5")):
        with open_rank_file(f) as h:
            c, r = read_group(h, "clients"), read_group(h, "rounds")
            if "uplink_bytes" in c:
                uplink = (uplink or 0) + int(np.sum(c["uplink_bytes"]))
            if len(r.get("bytes_sent", [])):
                exchange = float(np.mean(r["bytes_sent"]))
    n_rounds = row["rounds"] or 1
    row["uplink_per_round"] = uplink / n_rounds if uplink is not None else None
    row["exchange_per_round"] = exchange
    return row


def mean_mb(xs) -> str:
    xs = [x for x in xs if x is not None]
    return f"{statistics.mean(xs) / 1e6:.2f}" if xs else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    rows = [run_row(d) for d in sorted(args.root.glob("*/seed*")) if (d / "summary.json").is_file()]
    if not rows:
        print(f"{args.root}: no <config>/seed<S>/summary.json below it", file=sys.stderr)
        return 2
    done = [r for r in rows if r["outcome"] == "completed"]
    configs = sorted({r["config"] for r in rows})
    head = ["config", "n", "seeds", "final test acc", "best test acc", "MB uplink / round",
            "MB allreduce / round / rank", "wall s"]
    lines = []
    for cfg in configs:
        rs = [r for r in done if r["config"] == cfg]
        if not rs:
            continue
        lines.append([cfg, str(len(rs)), ",".join(r["seed"][4:] for r in rs), mean_std([r["acc"] for r in rs]),
                      mean_std([r["best"] for r in rs]), mean_mb(r["uplink_per_round"] for r in rs),
                      mean_mb(r["exchange_per_round"] for r in rs),
                      f"{statistics.mean(r['wall'] for r in rs):.0f}"])
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
        for ln in lines:
            print("| " + " | ".join(ln) + " |")
    else:
        for ln in [head, *lines]:
            print("  ".join(f"{c:>14s}" if i else f"{c:22s}" for i, c in enumerate(ln)))
    for r in rows:
        if r["outcome"] != "completed":
            print(f"not completed: {r['config']}/{r['seed']}: {r['outcome']} (final acc {r['acc']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
