"""Bytes and accuracy of the jobs/topk_phase grid (phase-aware against static top-k).

    python jobs/topk_phase_report.py runs/topk_phase

Per arm, mean +- std over seeds of: final test accuracy, bytes rank 0 sent per step (relative to the
dense run's), the mean density sent, and the share of steps Eq. 8 called critical.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
from tta_report import ms  # jobs/ is on sys.path when this script runs

from lbfl_mpi.telemetry import open_rank_file, read_group


def main() -> None:
    root = Path(sys.argv[1])
    rows, dense_bytes = {}, None
    for arm in ("dense", "static_1pct", "static_01pct", "adaptive"):
        acc, byt, dens, crit = [], [], [], []
        for seed in sorted((root / arm).glob("seed*")):
            f = seed / "summary.json"
            s = json.loads(f.read_text()) if f.exists() else {}
            if s.get("outcome") != "completed":
                continue
            with open_rank_file(seed / "rank0000.h5") as h:
                st = read_group(h, "steps")
            acc.append(s["final_test_acc"])
            byt.append(float(np.mean(st["bytes_sent"])))
            dens.append(float(np.nanmean(st["density_actual"])))
            crit.append(float(np.mean(st["phase"])))
        if acc:
            rows[arm] = (acc, byt, dens, crit)
            if arm == "dense":
                dense_bytes = statistics.mean(byt)
    print("| arm | seeds | final acc | bytes / step (rank 0) | vs dense | mean density | critical steps |")
    print("|---|---|---|---|---|---|---|")
    for arm, (acc, byt, dens, crit) in rows.items():
        rel = f"{statistics.mean(byt) / dense_bytes:.4f}" if dense_bytes else "n/a"
        print(f"| {arm} | {len(acc)} | {ms(acc, '.4f')} | {ms(byt, ',.0f')} | {rel} | {ms(dens, '.4f')} | "
              f"{ms(crit, '.3f')} |")


if __name__ == "__main__":
    main()
