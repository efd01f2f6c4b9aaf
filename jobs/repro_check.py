#!/usr/bin/env python3
"""Rerun one config per results table and compare it with the committed run summary.

    python jobs/repro_check.py                      # every table whose summary is committed
    python jobs/repro_check.py --tables table2,fig3 # some of them
    python jobs/repro_check.py --dry                # print the commands only

The summaries behind the README's tables are committed under ``benchmarks/results/runs/`` in the
layout ``run_grid.sh`` writes (``<the TOML's run.out_dir>/seed<S>/summary.json``, with its resolved
``config.toml``). Each check reruns one config at one seed into a temporary directory, with the
rank count of the config, and compares the outcome, the step count and the final and best test
accuracy with the committed summary.

Tolerance: the same code, torch version, CPU kind, rank count and thread count give the same run
bit for bit, so on the machine that made the summaries every difference is 0. Across machines the
floating-point kernels differ (AVX2 against AVX-512, another BLAS): the low bits of every step
differ, and a run drifts. The check picks configs that are stable under such drift (not the chaotic
ones, e.g. FedAvg with one label pair per client and H = 32, which diverged on one machine and not on
another) and accepts ``--tol`` (default 0.02, i.e. 2 percentage points of test accuracy) between
machines. ``--exact`` asks for equality instead (same machine and versions). Exit 0 when every
check is within tolerance, 1 when one is not, 2 on bad arguments or a missing summary.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "runs"
# one stable config per table (README's Results): table name -> (config, seed)
CHECKS = {
    "table1": ("jobs/table1/bsp_iid_gn.toml", 0),
    "table2": ("jobs/table2/fedavg_h08_iid.toml", 0),
    "fig3": ("jobs/fig3/const_b0064.toml", 0),
    "scaling_bncnn": ("jobs/scaling/bncnn/large_x1.toml", 0),
}
COMPARED = ("final_test_acc", "best_test_acc")


def committed_summary(config: Path, seed: int, results: Path = RESULTS) -> tuple[Path, dict]:
    """The committed summary of ``config`` at ``seed``: ``results/<run.out_dir minus runs/>/seed<S>``."""
    out_dir = tomllib.loads(config.read_text())["run"]["out_dir"]
    rel = Path(out_dir)
    rel = rel.relative_to("runs") if rel.parts[:1] == ("runs",) else rel
    path = results / rel / f"seed{seed}" / "summary.json"
    return path, json.loads(path.read_text())


def compare(committed: dict, rerun: dict, tol: float) -> list[tuple[str, object, object, bool]]:
    """Rows (key, committed, rerun, ok): outcome and steps must be equal, accuracies within ``tol``
    (``tol == 0``: equal)."""
    rows = [(k, committed.get(k), rerun.get(k), committed.get(k) == rerun.get(k)) for k in ("outcome", "steps")]
    for k in COMPARED:
        a, b = committed.get(k), rerun.get(k)
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
        rows.append((k, a, b, ok))
    return rows


def train_command(config: Path, seed: int, out: Path, launcher: list[str]) -> list[str]:
    world = int(tomllib.loads(config.read_text()).get("run", {}).get("world_size", 0)) or 1
    return [*launcher[:1], "-n", str(world), *launcher[1:], os.environ.get("LBFL", "lbfl"), "train", "--config",
            str(config), "--set", f"run.seed={seed}", "--set", f"run.out_dir={out}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default=",".join(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}")
    ap.add_argument("--tol", type=float, default=0.02, help="largest accepted |difference| of test accuracy")
    ap.add_argument("--exact", action="store_true", help="require equal values (same machine and versions)")
    ap.add_argument("--launcher", default=os.environ.get("MPIEXEC", "mpiexec") + " " +
                    os.environ.get("MPIEXEC_ARGS", "--oversubscribe"),
                    help="launcher and its options; '-n N' goes after the first word (default: mpiexec "
                         "--oversubscribe, or $MPIEXEC $MPIEXEC_ARGS)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="root of the committed summaries")
    ap.add_argument("--dry", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in tables if t not in CHECKS]
    if unknown or not tables:
        ap.error(f"--tables {args.tables!r}: unknown {unknown} (choices: {', '.join(CHECKS)})")
    if not 0 <= args.tol < 1:
        ap.error(f"--tol {args.tol}: must be in [0, 1)")
    tol = 0.0 if args.exact else args.tol
    launcher = shlex.split(args.launcher)
    crashed: list[str] = []
    differs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lbfl-repro-") as tmp:
        for name in tables:
            config, seed = CHECKS[name]
            config = REPO / config
            try:
                where, committed = committed_summary(config, seed, args.results)
            except FileNotFoundError as e:
                print(f"{name}: no committed summary ({e.filename}); run the grid and commit it first",
                      file=sys.stderr)
                return 2
            out = Path(tmp) / name
            cmd = train_command(config, seed, out, launcher)
            print(f"== {name}: {shlex.join(cmd)}", flush=True)
            if args.dry:
                continue
            run = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
            if run.returncode != 0:
                print(f"{name}: the rerun exited {run.returncode}: {error_line(run.stderr)}", file=sys.stderr)
                crashed.append(name)
                continue
            rerun = json.loads((out / "summary.json").read_text())
            print(f"   committed: {where.relative_to(REPO) if where.is_relative_to(REPO) else where}")
            for key, a, b, ok in compare(committed, rerun, tol):
                diff = f"{b - a:+.4f}" if isinstance(a, float) and isinstance(b, float) else ""
                print(f"   {key:15s} committed {a!s:22s} rerun {b!s:22s} {diff:8s} {'ok' if ok else 'DIFFERS'}")
                if not ok and name not in differs:
                    differs.append(name)
    print(verdict(crashed, differs), flush=True)
    return 1 if crashed or differs else 0


def error_line(stderr: str) -> str:
    """The line that says why a rerun failed: lbfl's own error line, not the launcher's banner after it."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("lbfl: error") or ln.startswith("lbfl train: error"):
            return ln[:400]
    return lines[0][:400] if lines else "(no output)"


def verdict(crashed: list[str], differs: list[str]) -> str:
    """The last line: which checks failed to run, which differ, or that all are within tolerance."""
    parts = []
    if crashed:
        parts.append(f"reruns that failed (nothing compared): {', '.join(crashed)}")
    if differs:
        parts.append(f"values beyond the tolerance: {', '.join(differs)}")
    return "; ".join(parts) if parts else "all within tolerance"


if __name__ == "__main__":
    sys.exit(main())
