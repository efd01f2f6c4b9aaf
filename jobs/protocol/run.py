"""The tuning protocol: a grid per arm on validation, then the chosen setting on paired seeds.

    python jobs/protocol/run.py SPEC.toml [--stage tune|final|report|all] [--runs DIR] [--out FILE] [--dry]
                                          [--parallel N] [--keep ARCHIVE]

SPEC.toml (jobs/protocol/gap.toml is one):

    [protocol]
    name = "gap"                    # run dirs under DIR/<name> (DIR: --runs, default runs/protocol)
    config = "jobs/protocol/gap_base.toml"   # the base config every run starts from
    ranks = 2                       # mpiexec -n
    tune_seeds = [0]                # seeds of the grid
    seeds = [1, 2, 3, 4, 5, 6]      # seeds of the final runs, paired across arms
    select = "final_val_acc"        # summary.json key the grid maximises (mean over tune_seeds)
    baselines = ["b2048"]           # arms the report compares every other arm with
    # compare = ["b64:b2048"]       # more paired comparisons for the report, "ARM:REFERENCE"

    [arm.b2048]
    set = ["train.batch_size=1024"]  # overrides of the base config
    grid = {key = "train.lr", multipliers = [0.5, 1, 2, 4, 8]}   # or values = [...]: numbers or words
    #                               (e.g. {key = "scaling.noise_schedule", values = ["always", "until"]})
    # lr_from = "b2048"             # instead of a grid of its own: take that arm's chosen lr
    # lr_matched = "step"           # or: this arm's own lr x the mean over that arm's final runs of
    #                               # summary.json's mean_scale_factor (a control for a transform
    #                               # that changes |G|); run after that arm's final runs

Stages:
1. tune: every arm with a grid runs each grid value with each tune seed (DIR/<name>/tune/<arm>/<value>/seedS);
2. final: every arm runs its chosen setting (the best grid value by ``select``, or its ``lr_from``
   arm's chosen train.lr) with each seed (DIR/<name>/final/<arm>/seedS), seed by seed (every arm at
   the first seed, then at the next), so a sitting that ends early leaves complete pairs;
3. report: jobs/protocol/report.py's tables (to stdout, or to --out).
``all`` runs the three in order. Every stage skips a run whose summary.json exists (any outcome): a
grid stopped at any point continues where it stopped, so one grid can span several sittings. A run
dir left without a summary (a killed run) is resumed from its checkpoint (run.resume=auto) when it has
one, and started again (run.overwrite=true) when not. Each run prints one progress line with its wall
time; ``--dry`` prints the commands instead. ``--parallel N`` keeps N runs going at once (a machine
with many cores, or one GPU shared by several small runs); each run's output then goes to
``<run dir>.log``, and a failed run lets the others finish before the grid stops.

``--keep ARCHIVE`` is for a grid whose run dirs do not outlive a sitting (scratch that is wiped, a
machine that is handed back): each run that finishes copies its summary.json, config.toml and rank
0's HDF5 file to the same path under ARCHIVE/<name> (a folder to commit), and before anything runs
every archived run missing from DIR is copied back (also under ``--dry``), so it counts as finished
and the tune choice and the report see it, and every finished run the archive lacks is archived.
``--stage report --runs ARCHIVE`` reports from the archive alone.

Runs are launched as

    $MPIEXEC -n <ranks> $MPIEXEC_ARGS $LBFL train --config <config> --set k=v ...

(defaults: mpiexec, --oversubscribe, lbfl); ``$PROTOCOL_SET`` adds ``--set`` overrides to every run
(whitespace-separated ``k=v``: where the data lie on another machine, say). A bad spec exits 2 with
one line before anything runs; a failed run stops the grid with its exit code (finished runs keep
their files).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lbfl_mpi.config import ConfigError, load_config


class SpecError(ValueError):
    """A bad protocol spec: its message names the key."""


@dataclass
class Arm:
    name: str
    overrides: list[str]
    key: str = ""                       # the grid's key ("" without a grid)
    values: list = field(default_factory=list)  # the grid's values of ``key`` (numbers, or words)
    labels: list[str] = field(default_factory=list)    # their directory names
    lr_from: str = ""
    lr_matched: str = ""                # its own config at lr x that arm's mean logged scale factor


@dataclass
class Spec:
    name: str
    config: Path
    ranks: int
    tune_seeds: list[int]
    seeds: list[int]
    select: str
    baselines: list[str]
    arms: dict[str, Arm]
    compare: list[tuple[str, str]] = field(default_factory=list)  # (arm, reference) pairs of the report


def _label(x: float) -> str:
    return f"{x:g}".replace("-", "m")


def load_spec(path: Path) -> Spec:
    """Parse and check a spec (module docstring); every arm's config is validated here."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: {e}") from None
    p = raw.get("protocol")
    if not isinstance(p, dict):
        raise SpecError(f"{path}: no [protocol] table")
    for key in ("name", "config", "seeds"):
        if key not in p:
            raise SpecError(f"protocol.{key}: missing")
    config = Path(p["config"])
    if not config.is_file():
        raise SpecError(f"protocol.config={str(config)!r}: no such file")
    ints = {k: p.get(k, d) for k, d in (("ranks", 1), ("tune_seeds", [0]), ("seeds", None))}
    if not (isinstance(ints["ranks"], int) and ints["ranks"] >= 1):
        raise SpecError(f"protocol.ranks={ints['ranks']!r}: must be an integer >= 1")
    for k in ("tune_seeds", "seeds"):
        v = ints[k]
        if not (isinstance(v, list) and v and all(isinstance(s, int) and s >= 0 for s in v) and len(set(v)) == len(v)):
            raise SpecError(f"protocol.{k}={v!r}: must be a non-empty list of distinct integers >= 0")
    arms_raw = raw.get("arm")
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise SpecError(f"{path}: no [arm.NAME] tables")
    arms = {name: _arm(name, a, config) for name, a in arms_raw.items()}
    for arm in arms.values():
        if arm.lr_from and (arm.lr_from not in arms or arms[arm.lr_from].key != "train.lr"):
            raise SpecError(f"arm.{arm.name}.lr_from={arm.lr_from!r}: must name an arm with a train.lr grid")
    for arm in arms.values():
        target = arms.get(arm.lr_matched)
        if arm.lr_matched and (target is None or target is arm or target.lr_matched):
            raise SpecError(f"arm.{arm.name}.lr_matched={arm.lr_matched!r}: must name another arm, "
                            "not itself lr-matched")
    baselines = p.get("baselines", [])
    for b in baselines:
        if b not in arms:
            raise SpecError(f"protocol.baselines: {b!r} is not an arm")
    compare = p.get("compare", [])
    if not isinstance(compare, list):
        raise SpecError(f"protocol.compare={compare!r}: must be a list of \"ARM:REFERENCE\" strings")
    pairs = []
    for c in compare:
        a, _, b = c.partition(":") if isinstance(c, str) else ("", "", "")
        if not (a in arms and b in arms and a != b):
            raise SpecError(f"protocol.compare: {c!r} must be \"ARM:REFERENCE\", two different arms")
        pairs.append((a, b))
    spec = Spec(name=str(p["name"]), config=config, ranks=ints["ranks"], tune_seeds=ints["tune_seeds"],
                seeds=ints["seeds"], select=str(p.get("select", "final_val_acc")), baselines=list(baselines),
                arms=arms, compare=pairs)
    for arm in arms.values():  # every setting an arm can run must be a valid config
        for ov in _variants(spec, arm):
            try:
                load_config(config, ov)
            except ConfigError as e:
                raise SpecError(f"arm.{arm.name}: {e}") from None
    return spec


def _arm(name: str, a: dict, config: Path) -> Arm:
    if not isinstance(a, dict):
        raise SpecError(f"arm.{name}: must be a table")
    unknown = set(a) - {"set", "grid", "lr_from", "lr_matched"}
    if unknown:
        raise SpecError(f"arm.{name}: unknown keys {sorted(unknown)} (set, grid, lr_from, lr_matched)")
    overrides = a.get("set", [])
    if not (isinstance(overrides, list) and all(isinstance(o, str) and "=" in o for o in overrides)):
        raise SpecError(f"arm.{name}.set={overrides!r}: must be a list of 'section.key=value' strings")
    arm = Arm(name, list(overrides), lr_from=str(a.get("lr_from", "")), lr_matched=str(a.get("lr_matched", "")))
    if arm.lr_from and arm.lr_matched:
        raise SpecError(f"arm.{name}: lr_from and lr_matched exclude each other")
    grid = a.get("grid")
    if grid is not None:
        if arm.lr_from or arm.lr_matched:
            raise SpecError(f"arm.{name}: grid excludes lr_from and lr_matched")
        if not isinstance(grid, dict) or "key" not in grid or ("values" in grid) == ("multipliers" in grid):
            raise SpecError(f"arm.{name}.grid: needs key and one of values, multipliers")
        vals = grid.get("values", grid.get("multipliers"))
        numbers = isinstance(vals, list) and vals and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals)
        words = "values" in grid and isinstance(vals, list) and vals and all(
            isinstance(v, str) and v and all(ch.isalnum() or ch in "_.-" for ch in v) for v in vals)
        if not (numbers or words) or len(set(vals)) != len(vals):
            raise SpecError(f"arm.{name}.grid: {vals!r} must be a non-empty list of distinct numbers > 0 "
                            "(values may instead be words: letters, digits, _ . -)")
        arm.key = str(grid["key"])
        if "multipliers" in grid:
            base = _resolved(config, arm.key, arm.overrides, name)
            arm.values = [base * float(v) for v in vals]
            arm.labels = [f"x{_label(float(v))}" for v in vals]
        else:
            arm.values = list(vals)
            arm.labels = list(vals) if words else [_label(float(v)) for v in vals]
    return arm


def _resolved(config: Path, key: str, overrides: list[str], arm: str) -> float:
    """The value of ``key`` in the base config with ``overrides`` applied (a multiplier grid's base)."""
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        raise SpecError(f"arm.{arm}: {e}") from None
    sec, _, name = key.partition(".")
    value = getattr(getattr(cfg, sec, None), name, None)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise SpecError(f"arm.{arm}.grid.key={key!r}: not a numeric config key")
    return float(value)


def _variants(spec: Spec, arm: Arm) -> list[list[str]]:
    if arm.key:
        return [arm.overrides + [f"{arm.key}={v!r}"] for v in arm.values]
    return [arm.overrides]


# --------------------------------------------------------------------------------------- runs
def summary(run: Path) -> dict | None:
    f = run / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _command(spec: Spec, run: Path, overrides: list[str], seed: int, name: str) -> list[str]:
    extra = ["run.resume=auto"] if (run / "checkpoints" / "latest.json").is_file() else ["run.overwrite=true"]
    more = shlex.split(os.environ.get("PROTOCOL_SET", ""))  # e.g. data.root on a machine with the data elsewhere
    sets = [*overrides, *more, f"run.seed={seed}", f"run.out_dir={run}", f"run.name={name}", *extra]
    cmd = [*shlex.split(os.environ.get("MPIEXEC", "mpiexec")), "-n", str(spec.ranks),
           *shlex.split(os.environ.get("MPIEXEC_ARGS", "--oversubscribe")),
           *shlex.split(os.environ.get("LBFL", "lbfl")), "train", "--config", str(spec.config)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _finished(spec: Spec, run: Path, returncode: int, wall: float) -> int:
    """Print the run's progress line; the exit code that stops the grid (0: go on). A run that exits
    non-zero after writing an outcome other than completed (diverged, preempted) does not stop it."""
    s = summary(run)
    if returncode != 0 and (s is None or s.get("outcome") == "completed"):
        print(f"protocol: {run}: exit {returncode} after {wall:.0f} s; the grid stops here", file=sys.stderr)
        return returncode
    got = f"{spec.select} {s.get(spec.select, float('nan')):.4f}" if s else "no summary"
    print(f"protocol: {run}: {s.get('outcome') if s else '?'}, {got}, {wall:.0f} s", file=sys.stderr, flush=True)
    return 0


KEPT = ("config.toml", "rank0000.h5", "summary.json")  # what --keep archives of a run; the summary last


def _copy_run(src: Path, dst: Path) -> None:
    """Copy ``src``'s ``KEPT`` files (those it has) to ``dst`` in that order: a copy with a summary
    is whole."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def sync(root: Path, keep: Path) -> tuple[int, int]:
    """Copy every run archived under ``keep`` whose dir under ``root`` has no summary.json back there,
    and archive every finished run under ``root`` that ``keep`` lacks (one that ended while nobody
    archived); the numbers (restored, archived)."""
    got = [0, 0]
    for i, (src, dst) in enumerate(((keep, root), (root, keep))):
        for s in sorted(src.rglob("summary.json")) if src.is_dir() else []:
            run = dst / s.parent.relative_to(src)
            if not (run / "summary.json").is_file():
                _copy_run(s.parent, run)
                got[i] += 1
    return got[0], got[1]


def run_all(spec: Spec, jobs: list[tuple[Path, list[str], int, str]], dry: bool, parallel: int,
            after: Callable[[Path], None] | None = None) -> None:
    """``jobs`` = (run dir, overrides, seed, name), those without a summary.json, ``parallel`` at a time
    (one: in order, each run's output on this stderr; more: each run's output in ``<run dir>.log``).
    ``after(run dir)`` follows each run that wrote a summary. A failed run lets the running ones
    finish, starts no more, and exits with its code."""
    todo = [j for j in jobs if summary(j[0]) is None]
    if dry:
        for run, ov, seed, name in todo:
            print(shlex.join(_command(spec, run, ov, seed, name)))
        return
    running: list[tuple[subprocess.Popen, Path, float, object]] = []
    stop = 0
    while running or (todo and not stop):
        while todo and not stop and len(running) < parallel:
            run, ov, seed, name = todo.pop(0)
            log = None
            if parallel > 1:
                run.parent.mkdir(parents=True, exist_ok=True)
                log = open(run.parent / f"{run.name}.log", "a")  # noqa: SIM115 - closed when the run ends
            p = subprocess.Popen(_command(spec, run, ov, seed, name), stdout=subprocess.DEVNULL, stderr=log)
            running.append((p, run, time.monotonic(), log))
        if len(running) == 1:
            running[0][0].wait()
        done = [r for r in running if r[0].poll() is not None]
        if not done:
            time.sleep(0.05)
            continue
        for r in done:
            p, run, t0, log = r
            running.remove(r)
            if log is not None:
                log.close()
            stop = stop or _finished(spec, run, p.returncode, time.monotonic() - t0)
            if after is not None and (run / "summary.json").is_file():
                after(run)
    if stop:
        raise SystemExit(stop)


def tune_dir(root: Path, arm: Arm, label: str, seed: int) -> Path:
    return root / "tune" / arm.name / label / f"seed{seed}"


def final_dir(root: Path, arm: str, seed: int) -> Path:
    return root / "final" / arm / f"seed{seed}"


def _score(s: dict | None, key: str) -> float:
    v = (s or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and v == v and (s or {}).get("outcome") == "completed" \
        else float("-inf")


def choose(spec: Spec, root: Path, arm: Arm) -> tuple[int, list[float]] | None:
    """Index of the best grid value by the mean of ``select`` over the tune seeds (a run that did not
    complete scores -inf), and every value's mean; None while a grid run is missing."""
    means = []
    for label in arm.labels:
        ss = [summary(tune_dir(root, arm, label, s)) for s in spec.tune_seeds]
        if any(x is None for x in ss):
            return None
        sc = [_score(x, spec.select) for x in ss]
        means.append(sum(sc) / len(sc))
    return max(range(len(means)), key=lambda i: (means[i], -i)), means


def matched_factor(spec: Spec, root: Path, arm: Arm) -> float | None:
    """The mean over seeds of ``summary.json``'s ``mean_scale_factor`` of the final runs of the arm
    ``arm`` is lr-matched to (completed runs only); None while one of them is missing."""
    ss = [summary(final_dir(root, arm.lr_matched, seed)) for seed in spec.seeds]
    if any(s is None for s in ss):
        return None
    got = [float(s["mean_scale_factor"]) for s in ss
           if s.get("outcome") == "completed" and isinstance(s.get("mean_scale_factor"), (int, float))]
    if not got:
        raise SpecError(f"arm.{arm.name}.lr_matched: no completed run of {arm.lr_matched} logged a scale factor")
    return sum(got) / len(got)


def chosen_overrides(spec: Spec, root: Path, arm: Arm) -> list[str] | None:
    """The final setting of ``arm`` (None while its grid, its lr_from arm's grid, or its lr_matched
    arm's final runs are unfinished)."""
    if arm.lr_matched:
        f = matched_factor(spec, root, arm)
        lr = _resolved(spec.config, "train.lr", arm.overrides, arm.name)
        return None if f is None else arm.overrides + [f"train.lr={lr * f!r}"]
    if arm.lr_from:
        src = spec.arms[arm.lr_from]
        c = choose(spec, root, src)
        return None if c is None else arm.overrides + [f"train.lr={src.values[c[0]]!r}"]
    if not arm.key:
        return arm.overrides
    c = choose(spec, root, arm)
    return None if c is None else arm.overrides + [f"{arm.key}={arm.values[c[0]]!r}"]


def stage_tune(spec: Spec, root: Path, dry: bool, parallel: int = 1,
               after: Callable[[Path], None] | None = None) -> None:
    jobs = [(tune_dir(root, arm, label, seed), ov, seed, f"{arm.name}_{label}")
            for arm in spec.arms.values() for label, ov in zip(arm.labels, _variants(spec, arm) if arm.key else [])
            for seed in spec.tune_seeds]
    run_all(spec, jobs, dry, parallel, after)


def stage_final(spec: Spec, root: Path, dry: bool, parallel: int = 1,
                after: Callable[[Path], None] | None = None) -> None:
    """Every arm's chosen setting on the seeds; the lr-matched arms after the arms they match."""
    for matched in (False, True):
        jobs = []
        for arm in spec.arms.values():
            if bool(arm.lr_matched) != matched:
                continue
            ov = chosen_overrides(spec, root, arm)
            if ov is None:
                why = (f"waits for the final runs of {arm.lr_matched}" if arm.lr_matched else
                       "its grid is not finished; run --stage tune first")
                print(f"protocol: arm {arm.name}: {why}", file=sys.stderr)
                if not dry:
                    raise SystemExit(1)
                continue
            jobs += [(final_dir(root, arm.name, seed), ov, seed, arm.name) for seed in spec.seeds]
        jobs.sort(key=lambda job: spec.seeds.index(job[2]))  # seed by seed: a grid cut short leaves whole pairs
        run_all(spec, jobs, dry, parallel, after)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("--stage", choices=("tune", "final", "report", "all"), default="all")
    ap.add_argument("--runs", type=Path, default=Path("runs/protocol"))
    ap.add_argument("--out", type=Path, help="write the report here (markdown) instead of stdout")
    ap.add_argument("--dry", action="store_true", help="print the commands of the runs still to do")
    ap.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="runs at a time (default 1; more: each run's output goes to <run dir>.log)")
    ap.add_argument("--keep", type=Path, metavar="ARCHIVE",
                    help="copy each finished run's summary, config and rank-0 file under ARCHIVE/<name>, "
                         "and take the runs archived there as finished")
    args = ap.parse_args(argv)
    if args.parallel < 1:
        print(f"protocol: error: --parallel={args.parallel}: must be >= 1", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(f"protocol: error: {e}", file=sys.stderr)
        return 2
    root = args.runs / spec.name
    after = None
    if args.keep is not None:
        keep = args.keep / spec.name
        if keep.resolve() == root.resolve():
            print(f"protocol: error: --keep={str(args.keep)!r}: is --runs itself", file=sys.stderr)
            return 2
        restored, archived = sync(root, keep)
        if restored or archived:
            print(f"protocol: {restored} finished runs restored from {keep}, {archived} archived there",
                  file=sys.stderr)

        def after(run: Path) -> None:
            _copy_run(run, keep / run.relative_to(root))
    if args.stage in ("tune", "all"):
        stage_tune(spec, root, args.dry, args.parallel, after)
    if args.stage in ("final", "all"):
        try:
            stage_final(spec, root, args.dry, args.parallel, after)
        except SpecError as e:  # an lr-matched arm whose target has no scale factor to match
            print(f"protocol: error: {e}", file=sys.stderr)
            return 2
    if args.stage in ("report", "all") and not args.dry:
        from report import report  # jobs/protocol/ is on sys.path when this script runs

        text = report(spec, root)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        else:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
