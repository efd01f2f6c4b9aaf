"""Run a list of `lbfl train` configs concurrently (several share one GPU), skipping finished ones.

Run: python benchmarks/gpu_fidelity_runs.py --out DIR --data-root ROOT [--parallel N] [--json ROWS]
         [--part KEY] [--markdown FILE] [--set K=V ...] [--set-run NAME K=V ...] CONFIG.toml...

Each config NAME.toml runs as ``python -m lbfl_mpi train --config CONFIG --set run.out_dir=DIR/NAME
--set data.root=ROOT --set run.overwrite=true --set run.preempt_signals=[] [--set K=V ...]`` (the
``--set-run NAME`` ones last), with stdout and stderr in DIR/NAME.log; at most ``--parallel`` at once.
A run whose directory already holds a finished run of the same resolved config (summary.json with
outcome "completed" or "nonfinite_stop", config.toml equal up to run.overwrite/run.resume) is skipped,
so running the same list again continues a grid. A run stopped on a non-finite value (exit 4, outcome
"nonfinite_stop") is a result (it diverged), not a failure.

One line is printed and one JSON row appended (benchmarks/gpu_rows.append_row) per run: name,
seconds, exit status, outcome, final and best test accuracy. Exit status: 0 when every run finished,
1 when one failed, 2 on bad input (a config that does not load), 128 + N on signal N.

SIGTERM, SIGINT or SIGHUP (``timeout`` at a part's limit) is forwarded to the runs, which are killed
1.5 s later if still there; the children also share this process's group, which ``timeout`` signals.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from gpu_rows import append_row

FINISHED = ("completed", "nonfinite_stop")
NONFINITE_EXIT = 4
IGNORED_KEYS = (("run", "overwrite"), ("run", "resume"))
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def add_grid_args(ap: argparse.ArgumentParser) -> None:
    """The arguments that decide each run's resolved config (shared with gpu_fidelity_report.py)."""
    ap.add_argument("configs", nargs="+", type=Path, metavar="CONFIG.toml")
    ap.add_argument("--out", type=Path, required=True, help="run directories go to OUT/NAME, logs to OUT/NAME.log")
    ap.add_argument("--data-root", required=True, help="data.root for every run")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="override for every run")
    ap.add_argument("--set-run", action="append", nargs=2, default=[], metavar=("NAME", "K=V"),
                    help="override for run NAME only (applied after --set)")


def run_overrides(args, name: str) -> list[str]:
    return [f"run.out_dir={args.out / name}", f"data.root={args.data_root}", "run.overwrite=true",
            "run.preempt_signals=[]", *args.set, *[kv for n, kv in args.set_run if n == name]]


def expected_config(path: Path, overrides: list[str]) -> dict:
    """The config the trainer will resolve and write to config.toml; ConfigError on bad input."""
    from lbfl_mpi.config import load_config

    return load_config(path, overrides).to_dict()


def _comparable(cfg: dict) -> dict:
    out = {s: dict(t) for s, t in cfg.items() if isinstance(t, dict)}
    for s, k in IGNORED_KEYS:
        out.get(s, {}).pop(k, None)
    return out


def finished_summary(run_dir: Path, expected: dict) -> dict | None:
    """summary.json of a finished run of ``expected`` in ``run_dir``, else None (absent, killed,
    preempted, unreadable, or a run of another config)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = tomllib.loads((run_dir / "config.toml").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("outcome", "completed") not in FINISHED:
        return None
    return summary if _comparable(config) == _comparable(expected) else None


def _acc(summary: dict | None, key: str) -> float | None:
    v = (summary or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [""])[-1].strip()[:200]


class Grid:
    def __init__(self, args):
        self.args = args
        self.results: list[dict] = []

    def record(self, name: str, rc: int | str, seconds: float, skipped: bool = False) -> None:
        run_dir = self.args.out / name
        summary = None
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            pass
        outcome = (summary or {}).get("outcome", "completed") if summary else "incomplete"
        ok = skipped or (rc == 0 and outcome == "completed") or (rc == NONFINITE_EXIT and outcome == "nonfinite_stop")
        if skipped:
            status = "skipped (finished before)"
        elif ok:
            status = "finished" if rc == 0 else "diverged (non-finite stop)"
        else:
            status = f"FAILED (exit {rc})" if rc != "killed" else "killed"
        row = {"run": name, "out_dir": str(run_dir), "skipped": skipped, "exit": rc, "seconds": round(seconds, 2),
               "outcome": outcome, "ok": ok, "final_test_acc": _acc(summary, "final_test_acc"),
               "best_test_acc": _acc(summary, "best_test_acc")}
        self.results.append({**row, "status": status})
        append_row(self.args.json, self.args.part, row)
        log = self.args.out / f"{name}.log"
        why = "" if ok else f": {_last_line(log)}"
        print(f"{name}: {status} in {seconds:.1f} s, final acc {_fmt(row['final_test_acc'])}, "
              f"best {_fmt(row['best_test_acc'])} (log {log}){why}", flush=True)
        if self.args.markdown:  # after every run: a kill keeps the runs finished so far
            self.args.markdown.write_text(self.markdown())

    def markdown(self) -> str:
        lines = ["| run | result | seconds | final acc | best acc |", "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['status']} | {r['seconds']:.1f} | {_fmt(r['final_test_acc'])} | "
                  f"{_fmt(r['best_test_acc'])} |" for r in self.results]
        return "\n".join(lines) + "\n"


def launch(args, name: str, config: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lbfl_mpi", "train", "--config", str(config)]
    for o in run_overrides(args, name):
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log = open(args.out / f"{name}.log", "w")
    try:  # same process group as this runner: `timeout` signals the children too
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    finally:
        log.close()


def stop_all(running: dict) -> None:
    for p, _ in running.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.5
    for p, _ in running.values():
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_args(ap)
    ap.add_argument("--parallel", type=int, default=1, help="runs at once [1]")
    ap.add_argument("--json", help="append one JSON row per run here")
    ap.add_argument("--part", default="runs", help="part name in the JSON rows")
    ap.add_argument("--markdown", type=Path, help="write a table of the runs here")
    args = ap.parse_args()
    if args.parallel < 1:
        print(f"gpu_fidelity_runs: --parallel {args.parallel}: must be >= 1", file=sys.stderr)
        return 2
    from lbfl_mpi.config import ConfigError

    queue = []
    names = [c.stem for c in args.configs]
    if len(set(names)) != len(names):
        print(f"gpu_fidelity_runs: two configs share a name: {' '.join(names)}", file=sys.stderr)
        return 2
    for cfg in args.configs:
        try:
            expected = expected_config(cfg, run_overrides(args, cfg.stem))
        except ConfigError as e:
            print(f"gpu_fidelity_runs: {cfg}: {e}", file=sys.stderr)
            return 2
        queue.append((cfg.stem, cfg, expected))
    args.out.mkdir(parents=True, exist_ok=True)
    grid, running, stop = Grid(args), {}, []

    def on_signal(signum, _frame):  # only noted: the loop below stops between two of its steps
        stop.append(signum)

    for s in SIGNALS:
        signal.signal(s, on_signal)
    while (queue or running) and not stop:
        while queue and len(running) < args.parallel and not stop:
            name, cfg, expected = queue.pop(0)
            if finished_summary(args.out / name, expected) is not None:
                grid.record(name, 0, 0.0, skipped=True)
                continue
            running[name] = (launch(args, name, cfg), time.monotonic())
        for name, (p, t0) in list(running.items()):
            if p.poll() is not None:
                del running[name]
                grid.record(name, p.returncode, time.monotonic() - t0)
        time.sleep(0.1)
    if stop:
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        for name, (p, t0) in list(running.items()):  # finished before the signal: a result
            if p.poll() is not None:
                del running[name]
                grid.record(name, p.returncode, time.monotonic() - t0)
        stop_all(running)
        for name, (_, t0) in running.items():
            grid.record(name, "killed", time.monotonic() - t0)
        print(f"gpu_fidelity_runs: stopped by signal {stop[0]}; {len(running)} run(s) killed, "
              f"{len(queue)} not started: {' '.join(n for n, _, _ in queue) or '-'}", flush=True)
        code = 128 + stop[0]
    else:
        code = 0 if all(r["ok"] for r in grid.results) else 1
    if args.markdown and not grid.results:
        args.markdown.write_text(grid.markdown())
    return code


if __name__ == "__main__":
    sys.exit(main())
