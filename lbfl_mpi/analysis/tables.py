"""Plain-text and JSON summaries of runs."""
from __future__ import annotations

import math

import numpy as np

from ..accuracy import accuracy_warning, config_num_classes
from .load import RunData, as_float

TIME_COLUMNS = ("t_data", "t_compute", "t_sync", "t_step")
# the per-rank table: mean, median and p90 over steps (t_eval: over evaluations), in ms
TABLE_TIMES = ("t_data", "t_compute", "t_straggle", "t_sync", "t_step", "t_eval")
STATS = ("mean", "median", "p90")
INCOMPLETE = "incomplete"  # rank files but no summary.json: killed, preempted or still running
# units of a record's values (``--json`` gives seconds and fractions where the text shows ms and %);
# keys of the per-rank entries are listed as ``ranks.KEY``
RECORD_UNITS = {
    "final_test_acc": "1", "best_test_acc": "1", "best_step": "0-based step index", "wall_time_s": "s",
    "eval_time_s": "s", "samples_per_s": "samples/s", "samples_per_s_no_eval": "samples/s",
    "global_batch": "samples", "epoch_time_s": "s", "ideal_epoch_time_s": "s", "epoch_vs_ideal": "1",
    "last_val_acc": "1", "last_train_acc": "1", "last_sharpness": "1",
    **{f"ranks.{st}_{c}": "s" for st in STATS for c in (*TABLE_TIMES, "t_compress")},
    "ranks.eval_time_s": "s", "ranks.bytes_sent_per_step": "bytes", "ranks.bytes_per_sync": "bytes",
    "ranks.dense_bytes": "bytes", "ranks.bytes_vs_dense": "1", "ranks.mean_density": "1",
    "ranks.idle_wait_share": "1", "ranks.final_batch": "samples",
}


def _mean(a: np.ndarray | None) -> float:
    return float(np.mean(a)) if a is not None and a.size else float("nan")


def _stat(a: np.ndarray | None, how: str) -> float:
    """``how`` in STATS of the finite values of ``a`` (NaN when there are none)."""
    if a is None:
        return float("nan")
    a = a[np.isfinite(a)]  # t_eval of rows kept from a file written before it existed is NaN
    if not a.size:
        return float("nan")
    if how == "mean":
        return float(np.mean(a))
    return float(np.median(a)) if how == "median" else float(np.percentile(a, 90))


def _time_stats(r) -> dict:
    """mean_/median_/p90_ of every TABLE_TIMES column and t_compress (seconds), and the rank's
    evaluation time in all (``eval_time_s``; NaN where the rank file has no t_eval column)."""
    out = {}
    for c in (*TABLE_TIMES, "t_compress"):
        col = r.eval.get(c) if c == "t_eval" else r.steps.get(c)
        for how in STATS:
            out[f"{how}_{c}"] = _stat(col, how)
    t_eval = r.eval.get("t_eval")
    out["eval_time_s"] = float(np.nansum(t_eval)) if t_eval is not None else float("nan")
    return out


def _best_step(run: RunData) -> int | None:
    """0-based index of the step after which the best evaluation was taken (summary.json best_step,
    else from the evaluation log)."""
    b = (run.summary or {}).get("best_step")
    if isinstance(b, int) and not isinstance(b, bool) and b >= 0:
        return b
    steps, acc, _ = run.monitored()
    if not acc.size or not steps.size or not np.isfinite(acc).any():
        return None
    return int(steps[int(np.nanargmax(acc))])


def _throughput(run: RunData, ranks: list[dict]) -> dict:
    """samples/s over the wall time with and without evaluation, and rank 0's evaluation seconds:
    from summary.json, else (a summary written before these keys) from its samples, its wall time
    and rank 0's t_eval column."""
    s = run.summary or {}
    wall, samples = as_float(s.get("wall_time_s")), as_float(s.get("samples"))
    eval_s = as_float(s.get("eval_time_s"))
    if np.isnan(eval_s) and ranks:
        eval_s = ranks[0]["eval_time_s"]
    no_eval = as_float(s.get("samples_per_s_no_eval"))
    if np.isnan(no_eval) and wall - eval_s > 0:
        no_eval = samples / (wall - eval_s)
    return {"eval_time_s": None if np.isnan(eval_s) else eval_s,
            "samples_per_s_no_eval": None if np.isnan(no_eval) else no_eval}


def idle_wait_share(run: RunData) -> list[float]:
    """Per rank: sum over steps of (t_sync - the fastest rank's t_sync that step) / sum of t_step, the
    share of the step a rank spends waiting for slower ones inside the collective."""
    cols = [r.steps.get("t_sync") for r in run.ranks]
    if not cols or any(c is None for c in cols):
        return []
    n = min(len(c) for c in cols)
    sync = np.stack([c[:n] for c in cols])
    wait = sync - sync.min(axis=0)
    return [float(wait[i].sum() / max(r.steps["t_step"][:n].sum(), 1e-12)) for i, r in enumerate(run.ranks)]


def epoch_vs_ideal(run: RunData, dataset_size: int | None = None) -> dict:
    """Wall time per global epoch (D samples over all clients) against the ideal.

    actual = D x sum over steps of the slowest rank's ``t_step`` / samples processed by all ranks;
    ideal  = D / sum_i s_i, with s_i = rank i's samples / its (``t_compute`` + ``t_straggle``): the
    epoch time if every client's compute throughput were fully used (no waiting, no sync cost).
    D is the clients' training samples (summary.json ``partition_sizes``) unless given. Evaluation and
    checkpoints are outside ``t_step`` and so outside both times.
    """
    nan = {"epoch_time_s": float("nan"), "ideal_epoch_time_s": float("nan"), "epoch_vs_ideal": float("nan")}
    need = ("t_step", "t_compute", "batch_size")
    if not run.ranks or any(c not in r.steps for r in run.ranks for c in need):
        return nan
    if dataset_size is None:
        dataset_size = sum((run.summary or {}).get("partition_sizes") or [])
    n = min(r.steps["t_step"].size for r in run.ranks)
    if not dataset_size or n == 0:
        return nan
    step = np.stack([r.steps["t_step"][:n] for r in run.ranks]).max(axis=0)
    samples = np.stack([r.steps["batch_size"][:n] for r in run.ranks]).astype(np.float64)
    busy = np.stack([r.steps["t_compute"][:n] + r.steps.get("t_straggle", np.zeros(n))[:n] for r in run.ranks])
    actual = dataset_size * step.sum() / samples.sum()
    ideal = dataset_size / float((samples.sum(axis=1) / busy.sum(axis=1)).sum())
    return {"epoch_time_s": float(actual), "ideal_epoch_time_s": ideal, "epoch_vs_ideal": float(actual / ideal)}


def scaling_label(config: dict) -> str:
    """Short description of a run's gradient transform, e.g. ``step X=4 t=0.5``."""
    sc = config.get("scaling", {})
    method = sc.get("method", "none")
    if method == "step":
        pol = "" if sc.get("polarity", "experiments") == "experiments" else " eq"
        return f"step X={sc.get('factor', 2.0):g} t={sc.get('threshold', 0.5):g}{pol}"
    if method == "gain":
        return f"gain b_s={sc.get('small_batch')}"
    if method == "teacher":
        return f"teacher b_s={sc.get('small_batch')}"
    return method


def outcome(run: RunData) -> dict:
    """How the run ended, from summary.json: ``outcome`` ("completed", "nonfinite_stop", "preempted",
    or "incomplete" without a summary), ``nonfinite`` (step and quantity of a stop) and
    ``nonfinite_skips`` (updates dropped under train.nonfinite="skip"). Summaries written before these
    keys existed count as completed without skips; without a summary the skips are counted in rank 0's
    ``nonfinite_skip`` column."""
    s = run.summary
    if s is None:
        col = run.ranks[0].steps.get("nonfinite_skip") if run.ranks else None
        skips = int(np.sum(col)) if col is not None else 0
        return {"outcome": INCOMPLETE, "nonfinite": None, "nonfinite_skips": skips}
    nonfinite = s.get("nonfinite") if isinstance(s.get("nonfinite"), dict) else None
    skips = s.get("nonfinite_skips")
    return {"outcome": str(s.get("outcome") or "completed"), "nonfinite": nonfinite,
            "nonfinite_skips": skips if isinstance(skips, int) and not isinstance(skips, bool) else 0}


def run_record(run: RunData) -> dict:
    final, best = run.accuracy()
    ranks = []
    waits = idle_wait_share(run)
    for r in run.ranks:
        rec = {"rank": r.rank, "rows": int(r.steps["step"].size) if "step" in r.steps else 0}
        rec.update(_time_stats(r))  # mean_t_step, median_t_step, p90_t_step, ... (TIME_COLUMNS among them)
        rec["bytes_sent_per_step"] = _mean(r.steps.get("bytes_sent"))
        rec.update(_traffic(r))
        bs = r.steps.get("batch_size")
        rec["idle_wait_share"] = waits[len(ranks)] if waits else float("nan")
        rec["batch_changes"] = int(np.count_nonzero(np.diff(bs))) if bs is not None and bs.size else 0
        rec["final_batch"] = int(bs[-1]) if bs is not None and bs.size else None
        ranks.append(rec)
    s = run.summary or {}
    return {"run": str(run.path), "name": run.name, "final_test_acc": final, "best_test_acc": best,
            "best_step": _best_step(run), "accuracy_warning": _accuracy_warning(run, final, best),
            "complete": run.summary is not None, **outcome(run), "steps": s.get("steps"),
            "world_size": len(run.ranks),
            "sync_mode": run.config.get("sync", {}).get("mode"), "samples_per_s": s.get("samples_per_s"),
            **_throughput(run, ranks),
            "global_batch": s.get("global_batch"), "scaling": scaling_label(run.config),
            "lr": run.config.get("train", {}).get("lr"),
            "peak_lr": _record_peak_lr(run.config, s.get("global_batch")),
            "wall_time_s": s.get("wall_time_s"), **epoch_vs_ideal(run), **readings(run), "ranks": ranks,
            "units": dict(RECORD_UNITS)}


def peak_lr(config: dict, batch: int) -> float | None:
    """train.lr, times B / train.base_batch under the linear scaling rule (optim.lr_at)."""
    tr = config.get("train", {})
    lr = tr.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        return None
    return float(lr) * (batch / tr.get("base_batch", 32) if tr.get("scale_lr") else 1.0)


def _record_peak_lr(config: dict, batch) -> float | None:
    """peak_lr at the run's global batch; None under the scaling rule when the batch is unknown."""
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
        return peak_lr(config, batch)
    return None if config.get("train", {}).get("scale_lr") else peak_lr(config, 1)


READINGS = ("val_acc", "train_acc", "sharpness")


def readings(run: RunData) -> dict:
    """The last evaluation's validation accuracy (data.val_fraction), train accuracy on the probe
    (train.eval_train_samples) and sharpness (train.eval_sharpness_iters), as ``last_<column>``; NaN
    where the run did not measure them."""
    ev = run.eval_curve()
    return {f"last_{c}": float(ev[c][-1]) if c in ev and ev[c].size else float("nan") for c in READINGS}


def format_readings(rec: dict, final_test: float) -> str:
    """"   last evaluation: val acc .., train acc .. (train - test ..), sharpness .." or ""."""
    val, tr, sh = (as_float(rec.get(f"last_{c}")) for c in READINGS)
    parts = [f"val acc {val:.4f}"] if math.isfinite(val) else []
    if math.isfinite(tr):
        gap = f" (train - test {tr - final_test:+.4f})" if math.isfinite(final_test) else ""
        parts.append(f"train acc {tr:.4f}{gap}")
    if math.isfinite(sh):
        parts.append(f"sharpness {sh:.4g}")
    return f"\n   last evaluation: {', '.join(parts)}" if parts else ""


def _accuracy_warning(run: RunData, final: float, best: float) -> str | None:
    """accuracy.py's near-chance / far-below-best line, for completed runs only (a killed or stopped
    run's last evaluation is not its end)."""
    if outcome(run)["outcome"] != "completed":
        return None
    return accuracy_warning(final, best, config_num_classes(run.config), _best_step(run))


def _traffic(r) -> dict:
    """Bytes per synchronising step against one dense exchange of the same vector (the rank file's
    ``dense_bytes`` attribute), and the realised density of what was sent."""
    synced = r.steps.get("synced")
    sent = r.steps.get("bytes_sent")
    dense = r.attrs.get("dense_bytes")
    if synced is None or sent is None or not synced.any():
        return {"bytes_per_sync": float("nan"), "dense_bytes": dense, "bytes_vs_dense": float("nan"),
                "mean_density": float("nan")}
    per_sync = float(np.mean(sent[synced.astype(bool)]))
    density = r.steps.get("density_actual")
    return {"bytes_per_sync": per_sync, "dense_bytes": dense,
            "bytes_vs_dense": per_sync / dense if dense else float("nan"),
            "mean_density": float(np.nanmean(density)) if density is not None and np.isfinite(density).any()
            else float("nan")}


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x * 1e3:.2f}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def outcome_warnings(rec: dict) -> list[str]:
    """Lines that flag a run whose numbers must not be read as a finished run's."""
    out = []
    kind, nf = rec.get("outcome", "completed"), rec.get("nonfinite") or {}
    if kind == "nonfinite_stop":
        at = f" at step {nf['step']}" if isinstance(nf.get("step"), int) else ""
        what = f"non-finite {nf['quantity']}" if nf.get("quantity") else "a non-finite value"
        on = f" on rank {nf['rank']}" if isinstance(nf.get("rank"), int) else ""
        out.append(f"WARNING: stopped{at}: {what}{on}")
    elif kind == INCOMPLETE:
        out.append("WARNING: incomplete run (no summary.json: killed, preempted or still running)")
    elif kind != "completed":
        out.append(f"WARNING: run ended early (outcome {kind!r})")
    n = rec.get("nonfinite_skips") or 0
    if n:
        out.append(f"WARNING: {n} update{'s' if n != 1 else ''} skipped (non-finite)")
    if rec.get("accuracy_warning"):
        out.append(f"WARNING: {rec['accuracy_warning']}")
    return out


def outcome_cell(rec: dict) -> str:
    """The comparison table's outcome column: completed, stop@STEP QUANTITY, incomplete, ... and
    +N skipped."""
    kind, nf = rec.get("outcome", "completed"), rec.get("nonfinite") or {}
    cell = "completed" if kind == "completed" else kind
    if kind == "nonfinite_stop":
        cell = f"stop@{nf.get('step', '?')} {nf.get('quantity', 'non-finite')}"
    n = rec.get("nonfinite_skips") or 0
    return cell + (f" +{n} skipped" if n else "")


def format_run(rec: dict) -> str:
    at = f" at step {rec['best_step']}" if rec.get("best_step") is not None else ""
    head = (f"== {rec['name']}  ({rec['run']})\n"
            f"   sync {rec['sync_mode']}, {rec['world_size']} ranks, "
            f"final test acc {as_float(rec['final_test_acc']):.4f}, best {as_float(rec['best_test_acc']):.4f}{at}")
    if rec["complete"] and as_float(rec["samples_per_s"]) > 0:
        head += f", {as_float(rec['samples_per_s']):.0f} samples/s"
        no_eval, eval_s = as_float(rec.get("samples_per_s_no_eval")), as_float(rec.get("eval_time_s"))
        head += f" ({no_eval:.0f} without evaluation)" if no_eval > 0 else ""
        head += f", {as_float(rec['wall_time_s']):.1f} s"
        head += f" ({eval_s:.1f} s evaluation)" if eval_s >= 0 else ""
    head += format_readings(rec, as_float(rec["final_test_acc"]))
    head += "".join(f"\n   {w}" for w in outcome_warnings(rec))
    if not math.isnan(rec.get("epoch_vs_ideal", float("nan"))):
        head += (f"\n   time per global epoch {rec['epoch_time_s']:.2f} s = {rec['epoch_vs_ideal']:.2f} x the ideal "
                 f"{rec['ideal_epoch_time_s']:.2f} s (every rank's compute throughput fully used)")
    r0 = rec["ranks"][0] if rec["ranks"] else None
    if r0 and not math.isnan(r0["bytes_per_sync"]):
        head += (f"\n   traffic (rank 0): {r0['bytes_per_sync']:.0f} bytes per sync = "
                 f"{100 * r0['bytes_vs_dense']:.2f} % of dense ({r0['dense_bytes']} bytes)")
        if not math.isnan(r0["mean_density"]):  # no density without compression (nothing selected)
            head += f", density {r0['mean_density']:.4g}, mean t_compress {r0['mean_t_compress'] * 1e3:.2f} ms"
    return "\n".join([head, *rank_table(rec["ranks"])])


def rank_table(ranks: list[dict]) -> list[str]:
    """The per-rank table: mean, median and p90 of each time in ms (over steps; t_eval over the
    evaluations), the idle-wait share in %, the final batch and the number of batch changes."""
    tail = {"idle_wait_share": ("idle wait %", 11), "final_batch": ("final b", 7), "batch_changes": ("b changes", 9)}
    head = (f"{'rank':>4s}  {'rows':>6s}  {'stat':6s}  " + "  ".join(f"{c:>10s}" for c in TABLE_TIMES) + "  "
            + "  ".join(f"{n:>{w}s}" for n, w in tail.values()))
    lines = ["   times in ms: mean, median and p90 over steps (t_eval: over evaluations)", "   " + head]
    for r in ranks:
        for i, how in enumerate(STATS):
            lead = f"{r['rank']:>4d}  {r['rows']:>6d}" if i == 0 else f"{'':>4s}  {'':>6s}"
            cells = [_ms(r.get(f"{how}_{c}")) for c in TABLE_TIMES]
            line = f"{lead}  {how:6s}  " + "  ".join(f"{x:>10s}" for x in cells)
            if i == 0:
                wait = r["idle_wait_share"]
                vals = [f"{100 * wait:.1f}" if not math.isnan(wait) else "-", _fmt(r["final_batch"]),
                        _fmt(r["batch_changes"])]
                line += "  " + "  ".join(f"{v:>{w}s}" for v, (_, w) in zip(vals, tail.values()))
            lines.append("   " + line.rstrip())
    return lines


def _rate(x) -> str:
    x = as_float(x)
    return "-" if math.isnan(x) or x <= 0 else f"{x:.0f}"


def _ms(x) -> str:
    x = as_float(x)
    return "-" if math.isnan(x) else f"{x * 1e3:.2f}"


def format_comparison(records: list[dict]) -> str:
    """One line per run, for grids (Table I/II)."""
    w = max(len(r["name"]) for r in records)
    ws = max(7, max(len(r["scaling"]) for r in records))
    lines = [f"{'run':{w}s}  {'sync':9s} {'scaling':{ws}s} {'B':>5s} {'peak_lr':>7s} {'final_acc':>9s} "
             f"{'best_acc':>9s} {'t_step ms':>9s} {'t_compress ms':>13s} {'% dense bytes':>13s} {'samples/s':>9s} "
             f"{'w/o eval':>9s}  outcome"]
    for r in records:
        ranks = r["ranks"]
        # over the ranks that have the time (a run without compression has no t_compress on any rank)
        t_step, t_comp = (_stat(np.array([as_float(x[k]) for x in ranks]), "mean")
                          for k in ("mean_t_step", "mean_t_compress"))
        ratio = ranks[0]["bytes_vs_dense"] if ranks else float("nan")
        gb = str(r["global_batch"]) if r["global_batch"] else "-"
        lr = f"{r['peak_lr']:g}" if r.get("peak_lr") is not None else "-"
        lines.append(f"{r['name']:{w}s}  {str(r['sync_mode']):9s} {r['scaling']:{ws}s} {gb:>5s} {lr:>7s} "
                     f"{as_float(r['final_test_acc']):9.4f} {as_float(r['best_test_acc']):9.4f} {t_step * 1e3:9.2f} "
                     f"{t_comp * 1e3:13.3f} {100 * ratio:13.2f} {_rate(r.get('samples_per_s')):>9s} "
                     f"{_rate(r.get('samples_per_s_no_eval')):>9s}  {outcome_cell(r)}")
    return "\n".join(lines)
