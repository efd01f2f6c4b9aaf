"""Time and samples to accuracy for the jobs/tta grid (see jobs/tta/make_configs.py).

    python jobs/tta_report.py runs/tta [--markdown FILE] [--save DIR]

``--save DIR`` copies each run's config.toml and summary.json and writes its curve.json (the numbers
this report reads from the rank files) under DIR/<setting>/<arm>/seedS, so that the report can be
made again from DIR without the rank files.

For each setting (nolink, link) the target is 95 % of the best static arm's mean final test accuracy.
A run's time to target is the training time (the sum of rank 0's ``t_step``, evaluation excluded:
every arm evaluates at its own cadence) up to the first evaluation at or above the target, and its
samples to target the sum of ``global_batch`` over those steps. Means +- std over the seeds that
reached it; "n/r" counts the seeds that did not. The goals: the adaptive arm reaches the target no
later than the best static arm, and in <= 0.7x the median static arm's time (over the 4 static arms'
means; an arm that never reached counts as infinitely slow).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

from lbfl_mpi.telemetry import open_rank_file, read_group

TARGET = 0.95


def load(run: Path) -> dict | None:
    """The run's curve: at each evaluation the training time and samples so far (from rank 0's file,
    or from a saved curve.json)."""
    s = run / "summary.json"
    if not s.exists() or json.loads(s.read_text()).get("outcome") != "completed":
        return None
    final = json.loads(s.read_text())["final_test_acc"]
    if not (run / "rank0000.h5").exists():
        c = json.loads((run / "curve.json").read_text())
        return {"final": final, **{k: np.asarray(v) if isinstance(v, list) else v for k, v in c.items()}}
    with open_rank_file(run / "rank0000.h5") as h:
        st, ev = read_group(h, "steps"), read_group(h, "eval")
    t = np.cumsum(np.asarray(st["t_step"], np.float64))
    n = np.cumsum(np.asarray(st["global_batch"], np.int64))
    at = np.asarray(ev["step"], np.int64)
    return {"final": final, "acc": np.asarray(ev["test_acc"], np.float64), "t": t[at], "n": n[at],
            "t_total": float(t[-1]), "mean_B": float(np.mean(st["global_batch"])),
            "t_link": float(np.sum(st["t_link"])) if "t_link" in st else 0.0}


def save_run(run: Path, dest: Path, curve: dict) -> None:
    """A run kept for its report: its config.toml and summary.json, and ``curve`` (JSON-able, the
    numbers the report reads from the rank files) as curve.json."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("config.toml", "summary.json"):
        shutil.copyfile(run / f, dest / f)
    (dest / "curve.json").write_text(json.dumps(curve))


def save(r: dict, run: Path, dest: Path) -> None:
    save_run(run, dest, {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items() if k != "final"})


def to_target(r: dict, target: float) -> tuple[float, float]:
    hit = np.nonzero(r["acc"] >= target)[0]
    if not len(hit):
        return math.inf, math.inf
    return float(r["t"][hit[0]]), float(r["n"][hit[0]])


def ms(xs: list[float], fmt: str) -> str:
    ok = [x for x in xs if math.isfinite(x)]
    if not ok:
        return f"not reached ({len(xs)})"
    sd = statistics.stdev(ok) if len(ok) > 1 else 0.0
    miss = f", n/r {len(xs) - len(ok)}" if len(ok) < len(xs) else ""
    return f"{format(statistics.mean(ok), fmt)} ± {format(sd, fmt)}{miss}"


def mean_or_inf(xs: list[float]) -> float:
    return statistics.mean(xs) if xs and all(math.isfinite(x) for x in xs) else math.inf


def report(root: Path, keep: Path | None = None) -> list[str]:
    out = []
    for setting in ("nolink", "link"):
        arms = {}
        for d in sorted((root / setting).glob("*")):
            runs = []
            for seed in sorted(d.glob("seed*")):
                r = load(seed)
                if r is not None:
                    runs.append(r)
                    if keep is not None:
                        save(r, seed, keep / setting / d.name / seed.name)
            if runs:
                arms[d.name] = runs
        static = {k: v for k, v in arms.items() if k.startswith("static")}
        if not static:
            continue
        best = max(static, key=lambda k: statistics.mean(r["final"] for r in static[k]))
        target = TARGET * statistics.mean(r["final"] for r in static[best])
        out += [f"## {setting}: target {target:.4f} (95 % of {best}'s mean final accuracy)", "",
                "| arm | seeds | final acc | time to target (s) | samples to target | train time (s) | mean B | "
                "t_link (s) |", "|---|---|---|---|---|---|---|---|"]
        ttt = {}
        for k, runs in arms.items():
            tt = [to_target(r, target) for r in runs]
            ttt[k] = mean_or_inf([t for t, _ in tt])
            out.append(f"| {k} | {len(runs)} | {ms([r['final'] for r in runs], '.4f')} | "
                       f"{ms([t for t, _ in tt], '.1f')} | {ms([n for _, n in tt], ',.0f')} | "
                       f"{ms([r['t_total'] for r in runs], '.1f')} | "
                       f"{ms([r['mean_B'] for r in runs], '.0f')} | "
                       f"{ms([r['t_link'] for r in runs], '.1f')} |")
        out.append("")
        if "adaptive" in ttt:
            st = [ttt[k] for k in static]
            best_t, med = min(st), statistics.median(st)
            a = ttt["adaptive"]
            g1 = "met" if a <= best_t else "missed"
            g2 = "met" if a <= 0.7 * med else "missed"
            why = (" (the median is infinite: at least half the static arms never reached the target, so this "
                   "goal says only that adaptive did)" if math.isinf(med) else "")
            out += [f"- adaptive {a:.1f} s against the best static arm's {best_t:.1f} s: **{g1}**",
                    f"- adaptive against 0.7 x the median static time ({0.7 * med:.1f} s): **{g2}**{why}", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--save", type=Path, help="copy each run's config, summary and curve here")
    args = ap.parse_args()
    lines = report(args.root, args.save)
    if not lines:
        sys.exit(f"{args.root}: no completed runs")
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
