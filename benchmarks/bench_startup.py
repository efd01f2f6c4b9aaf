"""Start-up of ``lbfl train``: seconds from starting the interpreter to the first training step.

Each variant is a source tree of lbfl_mpi put first on PYTHONPATH (the checkout's own tree, and with
``--base DIR`` an older tree to compare with, e.g. one made by ``git archive <commit> | tar -x -C DIR``).
A driver script wraps the step function so that the first call prints the seconds since the clock
read just before the process started, then the run continues to its end. Variants alternate, so
that the drift of a shared machine hits all alike; ``import torch`` alone, in a fresh interpreter,
is measured in the same rounds as the floor that no change to lbfl_mpi can go below.

    python benchmarks/bench_startup.py                       # this tree, 5 rounds
    python benchmarks/bench_startup.py --base /tmp/base --rounds 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_DRIVER = """
import os, sys, time
T0 = float(os.environ["LBFL_BENCH_T0"])
import lbfl_mpi.train.loop as loop
_step = loop.run_step
def _first(*a, **k):
    if not _first.done:
        _first.done = True
        print(f"LBFL_FIRST_STEP {time.time() - T0:.4f}", file=sys.stderr, flush=True)
    return _step(*a, **k)
_first.done = False
loop.run_step = _first
from lbfl_mpi.cli import main
sys.exit(main(sys.argv[1:]))
"""


def first_step_s(tree: Path, out: Path, config: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), LBFL_BENCH_T0=repr(time.time()))
    run = subprocess.run([sys.executable, "-c", _DRIVER, "train", "--config", config, "--set",
                          f"run.out_dir={out}", "--set", "train.steps=1", "--set", "run.overwrite=true"],
                         env=env, capture_output=True, text=True, timeout=300)
    for line in run.stderr.splitlines():
        if line.startswith("LBFL_FIRST_STEP "):
            return float(line.split()[1])
    raise RuntimeError(f"{tree}: no first step (exit {run.returncode}): {run.stderr[-500:]}")


def import_torch_s() -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, timeout=300)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="an older lbfl_mpi source tree to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", default=str(REPO / "jobs" / "demo.toml"))
    args = ap.parse_args(argv)
    trees = {"this tree": REPO}
    if args.base is not None:
        if not (args.base / "lbfl_mpi" / "__init__.py").is_file():
            ap.error(f"--base {args.base}: no lbfl_mpi/__init__.py there")
        trees = {"base": args.base, **trees}
    times: dict[str, list[float]] = {name: [] for name in [*trees, "import torch"]}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, tree in trees.items():
                times[name].append(first_step_s(tree, Path(tmp) / f"run{r}", args.config))
            times["import torch"].append(import_torch_s())
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
    print(f"\nseconds to the first step of `lbfl train --config {Path(args.config).name}` (1 rank, "
          f"{args.rounds} rounds, {os.cpu_count()} cores)")
    print("| variant | median | min | max |\n| --- | --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |")
    if args.base is not None:
        ratio = statistics.median(times["this tree"]) / statistics.median(times["base"])
        print(f"\nthis tree / base (medians): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
