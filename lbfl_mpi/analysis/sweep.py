"""Batch-size sweep report (paper Fig. 1/2/5): compute time t_c and data-movement time t_mov against
the batch size, per model, from ``lbfl plan --json`` files.

    python -m lbfl_mpi.analysis.sweep runs/batch_sweep/*.json [--plots DIR]

Prints one table per model (rank 0's plan: measured t_c, t_mov, their share, samples/s and the
compute-model fit) and, with ``--plots``, writes ``batch_sweep.png``: t_c and t_mov versus b, log-log.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..files import atomic_path, read_bytes


def load_plans(paths: list[str]) -> list[tuple[str, dict]]:
    """(name, rank 0's plan) of each file; the name is the file's stem."""
    out = []
    for p in paths:
        try:
            plans = json.loads(read_bytes(p, 64 * 2**20))  # a FIFO or device: an error, not a blocked read
        except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
            raise ValueError(f"{p}: not a `lbfl plan --json` file ({e})") from None
        if not isinstance(plans, list) or not plans or not isinstance(plans[0], dict) or "rows" not in plans[0]:
            raise ValueError(f"{p}: not a `lbfl plan --json` file (no per-rank list with rows)")
        out.append((Path(p).stem, plans[0]))
    return out


def format_sweep(name: str, plan: dict) -> str:
    lines = [f"== {name}: {plan['model']} {tuple(plan['input_shape'])} on {plan['device']}, "
             f"t_c = {plan['alpha'] * 1e3:.2f} ms + {plan['beta'] * 1e3:.3f} ms x b, "
             f"held-out t_c error median {100 * plan['t_compute_err_median']:.1f} %",
             f"   {'b':>5s} {'t_c ms':>10s} {'t_mov ms':>9s} {'t_mov %':>8s} {'samples/s':>10s} {'t_c/b ms':>9s}"]
    for r in plan["rows"]:
        total = r["t_compute"] + r["t_mov"]
        lines.append(f"   {r['batch']:5d} {r['t_compute'] * 1e3:10.2f} {r['t_mov'] * 1e3:9.3f} "
                     f"{100 * r['t_mov'] / total:8.2f} {r['samples_per_s']:10.1f} "
                     f"{r['t_compute'] / r['batch'] * 1e3:9.2f}")
    lines.append(f"   recommended batch (95 % of the best throughput) {plan['recommended_batch']}")
    return "\n".join(lines)


def plot_sweep(plans: list[tuple[str, dict]], out_dir: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, plan in plans:
        b = [r["batch"] for r in plan["rows"]]
        ax_c.plot(b, [r["t_compute"] * 1e3 for r in plan["rows"]], "o-", label=name)
        ax_m.plot(b, [r["t_mov"] * 1e3 for r in plan["rows"]], "o-", label=name)
    for ax, title in ((ax_c, "compute time t_c (forward + backward + step)"),
                      (ax_m, "data-movement time t_mov (host to device)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size b")
        ax.set_ylabel("ms per step")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    ax_c.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "batch_sweep.png"
    with atomic_path(path) as tmp:  # a fresh file, then a rename: never through a link planted at the name
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lbfl_mpi.analysis.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", metavar="PLAN_JSON")
    ap.add_argument("--plots", metavar="DIR", help="write batch_sweep.png to DIR")
    args = ap.parse_args(argv)
    try:
        plans = load_plans(args.files)
    except ValueError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    print("\n\n".join(format_sweep(n, p) for n, p in plans))
    if args.plots:
        try:
            print(f"wrote {plot_sweep(plans, args.plots)}", file=sys.stderr)
        except OSError as e:  # e.g. --plots under a regular file
            print(f"sweep: error: {e.filename or args.plots}: cannot write plots ({e.strerror or e})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
