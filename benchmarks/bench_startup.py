"""Start-up of ``lbfl train``: seconds from starting the interpreter to the first training step.

Each variant is a source tree of lbfl_mpi put first on PYTHONPATH (the checkout's own tree, and with
``--base DIR`` an older tree to compare with, e.g. one made by ``git archive <commit> | tar -x -C DIR``).
The driver drops the editable install's import finder, so that no module of the checkout fills in
for one the older tree lacks, and checks that ``lbfl_mpi`` was imported from the tree. Two readings
per run, in seconds since the clock read just before the process started:

- *first backward*: the first call of ``torch.autograd.backward``, i.e. the first step's forward pass
  is done (every tree trains through it, whatever its module layout);
- *1-step run*: the whole ``lbfl train --set train.steps=1`` to the process exit, which includes the
  first optimizer step (where lazy imports such as ``torch._dynamo`` land in older trees), the
  evaluation, the output files and the interpreter's exit.

Variants alternate, so that the drift of a shared machine hits all alike; ``import torch`` alone, in a
fresh interpreter, is measured in the same rounds as the floor that no change to lbfl_mpi can go below.

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
sys.meta_path[:] = [f for f in sys.meta_path
                    if "editable" not in (getattr(f, "__module__", "") + getattr(f, "__name__", "")).lower()]
import torch, torch.autograd
_backward = torch.autograd.backward
def _first(*a, **k):
    if not _first.done:
        _first.done = True
        print(f"LBFL_FIRST_BACKWARD {time.time() - T0:.4f}", file=sys.stderr, flush=True)
    return _backward(*a, **k)
_first.done = False
torch.autograd.backward = _first
import lbfl_mpi
if not lbfl_mpi.__file__.startswith(os.environ["LBFL_BENCH_TREE"]):
    sys.exit(f"lbfl_mpi imported from {lbfl_mpi.__file__}, not from {os.environ['LBFL_BENCH_TREE']}")
from lbfl_mpi.cli import main
sys.exit(main(sys.argv[1:]))
"""


def first_step_s(tree: Path, out: Path, config: str) -> tuple[float, float]:
    """Seconds from the process start to the first backward and to the end of a 1-step run."""
    env = dict(os.environ, PYTHONPATH=str(tree), LBFL_BENCH_TREE=str(tree.resolve()),
               LBFL_BENCH_T0=repr(time.time()))
    run = subprocess.run([sys.executable, "-c", _DRIVER, "train", "--config", config, "--set",
                          f"run.out_dir={out}", "--set", "train.steps=1", "--set", "run.overwrite=true"],
                         env=env, cwd=out.parent, capture_output=True, text=True, timeout=300)
    whole = time.time() - float(env["LBFL_BENCH_T0"])
    if run.returncode != 0:
        raise RuntimeError(f"{tree}: exit {run.returncode}: {run.stderr[-500:]}")
    for line in run.stderr.splitlines():
        if line.startswith("LBFL_FIRST_BACKWARD "):
            return float(line.split()[1]), whole
    raise RuntimeError(f"{tree}: no backward pass: {run.stderr[-500:]}")


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
    names = [f"{name}: {what}" for name in trees for what in ("first backward", "1-step run")]
    times: dict[str, list[float]] = {name: [] for name in [*names, "import torch"]}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, tree in trees.items():
                first, whole = first_step_s(tree, Path(tmp) / f"run{r}", args.config)
                times[f"{name}: first backward"].append(first)
                times[f"{name}: 1-step run"].append(whole)
            times["import torch"].append(import_torch_s())
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
    print(f"\nseconds from the process start, `lbfl train --config {Path(args.config).name}` (1 rank, "
          f"{args.rounds} rounds, {os.cpu_count()} cores)")
    print("| variant | median | min | max |\n| --- | --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |")
    if args.base is not None:
        for what in ("first backward", "1-step run"):
            ratio = statistics.median(times[f"this tree: {what}"]) / statistics.median(times[f"base: {what}"])
            print(f"this tree / base, {what} (medians): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
