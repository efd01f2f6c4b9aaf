"""The Fig. 7/8 grid of benchmarks/gpu_fidelity.sh as markdown: table, the paper's orderings, charts.

Run: python benchmarks/gpu_fidelity_report.py --out DIR --data-root ROOT [--set K=V ...]
         [--set-run NAME K=V ...] --markdown FILE [--plots DIR] [--max-png 6] [--json ROWS] CONFIG.toml...

The grid arguments are those given to gpu_fidelity_runs.py, so that each run's resolved config is
known; a run counts only when DIR/NAME holds a finished run of exactly that config (anything else is
"missing"). The runs are the step-function scaling U(X) of Eq. 6 (the gradient multiplied by X when
the gradient change delta of Eq. 8 is >= the threshold) against the unscaled large batch, the small
batch and constant-lr controls. Their roles come from the configs: the base is the unscaled run at the
largest batch and the smallest lr, the small batch any unscaled run at a smaller batch, the controls
the unscaled runs at the largest batch and a larger lr, the transforms the step runs with X > 1.

Written: the set-up (model, batch, steps, precision, device from the rank file and the machine row of
ROWS), a table (run, X, threshold, lr, B, final acc, best acc, median t_step), the paper's orderings
each marked **held**, **not held** or **not testable (run missing)**:
  (1) some X > 1 at threshold 0.5 above X = 1;
  (2) the best scaled large batch above the small batch at equal iterations;
  (3a), (3b) Fig. 8: threshold 0.8 above threshold 0.5 at X = 8 and at X = 16;
  (4) the best transform above the best constant-lr control;
then the comparison table of ``lbfl analyze RUNS --plots DIR`` and its charts, of which at most
``--max-png`` are kept (the GPU machine returns few files). A run stopped on a non-finite value
ranks below every run that finished. Comparisons are strict (a tie is "not held"); with one seed a
difference below ~1 point is noise, which the text says. Exit status: 0 when the report was written
and ``lbfl analyze`` succeeded, 1 otherwise, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from gpu_fidelity_runs import add_grid_args, expected_config, finished_summary, run_overrides
from gpu_rows import append_row

# charts of `lbfl analyze --plots`, most relevant first
PLOT_ORDER = ("convergence.png", "grad_change.png", "scale_factors.png", "accuracy_vs_batch.png",
              "grad_norm_early.png")
NOISE = 0.01  # one seed: below one point of accuracy a difference is noise


@dataclass
class Run:
    name: str
    config: dict
    summary: dict | None = None
    t_step_ms: float | None = None
    attrs: dict | None = None

    @property
    def method(self) -> str:
        return self.config["scaling"]["method"]

    @property
    def x(self) -> float:
        return float(self.config["scaling"]["factor"]) if self.method == "step" else 1.0

    @property
    def threshold(self) -> float | None:
        return float(self.config["scaling"]["threshold"]) if self.method == "step" else None

    @property
    def lr(self) -> float:
        return float(self.config["train"]["lr"])

    @property
    def batch(self) -> int:
        return int(self.config["train"]["batch_size"]) * max(1, int(self.config["run"]["world_size"]))

    @property
    def diverged(self) -> bool:
        return self.summary is not None and self.summary.get("outcome") == "nonfinite_stop"

    def acc(self, key: str = "final_test_acc") -> float | None:
        v = (self.summary or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def score(self) -> float | None:
        """Final accuracy for the orderings: None when missing, -inf when diverged."""
        if self.summary is None:
            return None
        return -math.inf if self.diverged else self.acc()


def label(r: Run) -> str:
    if r.method == "step":
        return f"X = {r.x:g}, t = {r.threshold:g}"
    return f"B = {r.batch}, lr {r.lr:g}" if r.method == "none" else r.method


def shown(v: float | None) -> str:
    return "diverged" if v == -math.inf else ("-" if v is None else f"{v:.4f}")


def compare(claim: str, better: list[Run], worse: list[Run]) -> dict:
    """Is the best present run of ``better`` strictly above the best present run of ``worse``?"""
    missing = [r.name for r in better + worse if r.score() is None]
    b = [r for r in better if r.score() is not None]
    w = [r for r in worse if r.score() is not None]
    out = {"claim": claim, "missing": missing}
    if not b or not w:
        if missing:
            return {**out, "verdict": "not testable (run missing)", "detail": f"{', '.join(missing)} did not finish"}
        return {**out, "verdict": "not testable (no such run in the grid)", "detail": "nothing to compare"}
    hi, lo = max(b, key=Run.score), max(w, key=Run.score)
    diff = hi.score() - lo.score()
    held = diff > 0
    points = f"{100 * diff:+.2f} points" if math.isfinite(diff) else "one side diverged"
    noise = " (below ~1 point: noise at n = 1)" if math.isfinite(diff) and abs(diff) < NOISE else ""
    detail = (f"{hi.name} ({label(hi)}) {shown(hi.score())} against {lo.name} ({label(lo)}) "
              f"{shown(lo.score())}: {points}{noise}")
    if missing:
        detail += f"; missing: {', '.join(missing)}"
    return {**out, "verdict": "held" if held else "not held", "detail": detail, "better": hi.name,
            "worse": lo.name, "diff": diff if math.isfinite(diff) else None}


def orderings(runs: list[Run]) -> list[tuple[str, dict]]:
    """The paper's orderings on this grid (roles from the configs, see the module docstring)."""
    plain = [r for r in runs if r.method == "none"]
    big = max((r.batch for r in runs), default=0)
    base_lr = min((r.lr for r in plain if r.batch == big), default=None)
    base = [r for r in plain if r.batch == big and r.lr == base_lr]
    small = [r for r in plain if r.batch < big]
    controls = [r for r in plain if r.batch == big and base_lr is not None and r.lr > base_lr]
    scaled = [r for r in runs if r.method == "step" and r.x > 1 and r.batch == big]

    def at(x: float, t: float) -> list[Run]:
        return [r for r in scaled if r.x == x and r.threshold == t]

    return [
        ("1", compare("Some scaled X (X > 1, threshold 0.5) above X = 1",
                      [r for r in scaled if r.threshold == 0.5], base)),
        ("2", compare("The scaled large batch (best X > 1) above the small batch at equal iterations",
                      scaled, small)),
        ("3a", compare("Fig. 8, threshold 0.8 rescues large X: X = 8 at t = 0.8 above X = 8 at t = 0.5",
                       at(8, 0.8), at(8, 0.5))),
        ("3b", compare("Fig. 8, threshold 0.8 rescues large X: X = 16 at t = 0.8 above X = 16 at t = 0.5",
                       at(16, 0.8), at(16, 0.5))),
        ("4", compare("Control: the best transform above the constant-lr controls (no transform)",
                      scaled, controls)),
    ]


def rank0(run_dir: Path) -> tuple[float | None, dict]:
    """(median t_step in ms, attributes) of rank 0's file, read with h5py alone (no torch import:
    ``lbfl analyze`` checks the files afterwards); (None, {}) when unreadable."""
    import h5py

    try:
        with h5py.File(run_dir / "rank0000.h5", "r") as h:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h.attrs.items() if k != "config_json"}
            t = h["steps/t_step"][:] if "steps/t_step" in h else np.array([])
    except (OSError, KeyError, ValueError) as e:
        print(f"gpu_fidelity_report: {run_dir}/rank0000.h5: unreadable ({e})", file=sys.stderr)
        return None, {}
    return (float(np.median(t)) * 1e3 if t.size else None), attrs


def load(args) -> list[Run]:
    runs = []
    for cfg in args.configs:
        r = Run(cfg.stem, expected_config(cfg, run_overrides(args, cfg.stem)))
        r.summary = finished_summary(args.out / r.name, r.config)
        if r.summary is not None:
            r.t_step_ms, r.attrs = rank0(args.out / r.name)
        runs.append(r)
    return runs


def machine_row(rows: str | None) -> dict:
    """The last row gpu_env.py wrote (part "machine"), {} when there is none."""
    found = {}
    try:
        lines = Path(rows).read_text().splitlines() if rows else []
    except OSError:
        return found
    for ln in lines:
        try:
            row = json.loads(ln)
        except ValueError:  # a line cut by a kill
            continue
        if isinstance(row, dict) and row.get("part") == "machine" and "result" not in row:
            found = row
    return found


def setup_text(runs: list[Run], machine: dict) -> str:
    done = [r for r in runs if r.summary is not None]
    first = (done or runs)[0]
    c, s, a = first.config, (done[0].summary if done else {}), (done[0].attrs if done else {}) or {}
    steps = sorted({int(r.config["train"]["steps"]) for r in runs})
    batches = sorted({r.batch for r in runs}, reverse=True)
    opt = c["train"]
    mom = f"momentum {opt['momentum']:g}" if opt["momentum"] else "no momentum"
    device = a.get("device", "unknown (no run finished)")
    if str(device).startswith("cuda") and machine.get("gpu"):
        device += f" ({machine['gpu']})"
    train_n = sum(s.get("partition_sizes") or []) if s else None
    steps_text = (f"{steps[0]} steps for every run (equal iterations)" if len(steps) == 1
                  else f"UNEQUAL step counts {steps}")
    return (f"Set-up: {c['model']['name']} (model.norm {c['model']['norm']}) on {c['data']['name']}"
            f"{f' ({train_n} training images)' if train_n else ''}, {c['run']['world_size'] or 1} rank(s), "
            f"{c['sync']['mode'].upper()}, global batches {' / '.join(map(str, batches))}, "
            f"{opt['optimizer'].upper()} {mom}, {steps_text}, test accuracy every {opt['eval_every']} steps; "
            f"precision {a.get('precision', opt['precision'])}, channels_last "
            f"{'on' if int(a.get('channels_last', opt['channels_last'])) else 'off'}; device {device}. "
            f"Step scaling U(X) of Eq. 6 multiplies the gradient by X when the gradient change of Eq. 8 "
            f"is >= the threshold (polarity \"experiments\"). **One seed (n = 1): differences below ~1 "
            f"point are noise.**")


def table(runs: list[Run]) -> str:
    lines = ["| run | X | threshold | lr | B | final acc | best acc | median t_step ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        t = "-" if r.threshold is None else f"{r.threshold:g}"
        if r.summary is None:
            final, best, ms = "missing (not finished)", "-", "-"
        else:
            final = shown(r.acc())
            if r.diverged:
                nf = r.summary.get("nonfinite") or {}
                final += f" (diverged at step {nf.get('step', '?')})"
            best = shown(r.acc("best_test_acc"))
            ms = f"{r.t_step_ms:.1f}" if r.t_step_ms is not None else "-"
        lines.append(f"| {r.name} | {r.x:g} | {t} | {r.lr:g} | {r.batch} | {final} | {best} | {ms} |")
    return "\n".join(lines)


def analyze(dirs: list[Path], plots: Path | None) -> tuple[int, str]:
    """``lbfl analyze DIRS [--plots DIR]``: (exit status, the text from the comparison table on)."""
    cmd = [sys.executable, "-m", "lbfl_mpi", "analyze", *map(str, dirs)] + (["--plots", str(plots)] if plots else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return 1, "lbfl analyze did not finish within 300 s"
    if p.returncode:
        return p.returncode, (p.stderr or p.stdout).strip()[-2000:]
    lines = p.stdout.rstrip().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("run ")), 0)
    return 0, "\n".join(lines[start:])


def keep_plots(plots: Path, limit: int) -> list[str]:
    """Delete all but the ``limit`` most relevant PNGs in ``plots``; the kept names, in order."""
    have = sorted(p.name for p in plots.glob("*.png"))
    ranked = [n for n in PLOT_ORDER if n in have] + [n for n in have if n not in PLOT_ORDER]
    for name in ranked[limit:]:
        (plots / name).unlink()
    return ranked[:limit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_args(ap)
    ap.add_argument("--markdown", type=Path, required=True, help="write the report section here")
    ap.add_argument("--plots", type=Path, help="lbfl analyze --plots DIR (a folder beside the report)")
    ap.add_argument("--max-png", type=int, default=6, help="PNGs kept in --plots [6]")
    ap.add_argument("--json", help="the rows file: its machine row names the GPU; one row per ordering is added")
    ap.add_argument("--part", default="analysis", help="part name in the JSON rows")
    args = ap.parse_args()
    from lbfl_mpi.config import ConfigError

    try:
        runs = load(args)
    except ConfigError as e:
        print(f"gpu_fidelity_report: {e}", file=sys.stderr)
        return 2
    verdicts = orderings(runs)
    done = [args.out / r.name for r in runs if r.summary is not None]
    steps = sorted({int(r.config["train"]["steps"]) for r in runs})
    out = [setup_text(runs, machine_row(args.json)), "",
           f"### Final test accuracy after {' / '.join(map(str, steps))} steps "
           f"({len(done)} of {len(runs)} runs finished)",
           "", table(runs), "", "### Which of the paper's orderings held", ""]
    for key, v in verdicts:
        out.append(f"- ({key}) {v['claim']}: **{v['verdict']}**; {v['detail']}.")
        append_row(args.json, args.part, {"ordering": key, **v})
    out.append("")
    code, text = 0, "no run finished: nothing to analyse"
    if done:
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            for old in args.plots.glob("*.png"):  # charts of an earlier invocation
                old.unlink()
        code, text = analyze(done, args.plots)
    out += ["### Per-run values (`lbfl analyze`)", "", "```", text, "```", ""]
    if args.plots and done and code == 0:
        kept = keep_plots(args.plots, args.max_png)
        out += ["Charts (`lbfl analyze --plots`, beside the report): "
                + ", ".join(f"[`{args.plots.name}/{n}`]({args.plots.name}/{n})" for n in kept) + "."]
    args.markdown.write_text("\n".join(out) + "\n")
    print(f"gpu_fidelity_report: {len(done)} of {len(runs)} runs finished; "
          + "; ".join(f"({k}) {v['verdict']}" for k, v in verdicts) + f"; written to {args.markdown}")
    if code:
        print(f"gpu_fidelity_report: lbfl analyze failed (exit {code}): {text}")
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
