"""Plain-text and JSON summaries of runs."""
from __future__ import annotations

import math

import numpy as np

from .load import RunData

TIME_COLUMNS = ("t_data", "t_compute", "t_sync", "t_step")


def _mean(a: np.ndarray | None) -> float:
    return float(np.mean(a)) if a is not None and a.size else float("nan")


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


def run_record(run: RunData) -> dict:
    final, best = run.accuracy()
    ranks = []
    waits = idle_wait_share(run)
    for r in run.ranks:
        rec = {"rank": r.rank, "rows": int(r.steps["step"].size) if "step" in r.steps else 0}
        rec.update({f"mean_{c}": _mean(r.steps.get(c)) for c in TIME_COLUMNS})
        rec["mean_t_compress"] = _mean(r.steps.get("t_compress"))
        rec["bytes_sent_per_step"] = _mean(r.steps.get("bytes_sent"))
        rec.update(_traffic(r))
        bs = r.steps.get("batch_size")
        rec["idle_wait_share"] = waits[len(ranks)] if waits else float("nan")
        rec["batch_changes"] = int(np.count_nonzero(np.diff(bs))) if bs is not None and bs.size else 0
        rec["final_batch"] = int(bs[-1]) if bs is not None and bs.size else None
        ranks.append(rec)
    s = run.summary or {}
    return {"run": str(run.path), "name": run.name, "final_test_acc": final, "best_test_acc": best,
            "complete": run.summary is not None, "steps": s.get("steps"), "world_size": len(run.ranks),
            "sync_mode": run.config.get("sync", {}).get("mode"), "samples_per_s": s.get("samples_per_s"),
            "wall_time_s": s.get("wall_time_s"), "ranks": ranks}


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


def format_run(rec: dict) -> str:
    head = (f"== {rec['name']}  ({rec['run']})\n"
            f"   sync {rec['sync_mode']}, {rec['world_size']} ranks, "
            f"final test acc {rec['final_test_acc']:.4f}, best {rec['best_test_acc']:.4f}")
    if not rec["complete"]:
        head += "  [incomplete: no summary.json]"
    elif rec["samples_per_s"]:
        head += f", {rec['samples_per_s']:.0f} samples/s, {rec['wall_time_s']:.1f} s"
    r0 = rec["ranks"][0] if rec["ranks"] else None
    if r0 and not math.isnan(r0["bytes_per_sync"]):
        head += (f"\n   traffic (rank 0): {r0['bytes_per_sync']:.0f} bytes per sync = "
                 f"{100 * r0['bytes_vs_dense']:.2f} % of dense ({r0['dense_bytes']} bytes), density "
                 f"{r0['mean_density']:.4g}, mean t_compress {r0['mean_t_compress'] * 1e3:.2f} ms")
    cols = ("rank", "rows") + tuple(f"mean_{c}" for c in TIME_COLUMNS) + ("idle_wait_share", "final_batch",
                                                                           "batch_changes")
    names = {"idle_wait_share": "idle wait %", "final_batch": "final b", "batch_changes": "b changes"}
    lines = [head, "   " + "  ".join(f"{names.get(c, c.replace('mean_', '') + (' ms' if c.startswith('mean') else '')):>12s}"
                                    for c in cols)]
    for r in rec["ranks"]:
        cells = [f"{100 * r[c]:.1f}" if c == "idle_wait_share" and not math.isnan(r[c]) else _fmt(r[c])
                 for c in cols]
        lines.append("   " + "  ".join(f"{x:>12s}" for x in cells))
    return "\n".join(lines)


def format_comparison(records: list[dict]) -> str:
    """One line per run, for grids (Table I/II)."""
    w = max(len(r["name"]) for r in records)
    lines = [f"{'run':{w}s}  {'sync':9s} {'final_acc':>9s} {'best_acc':>9s} {'t_step ms':>9s} "
             f"{'t_compress ms':>13s} {'% dense bytes':>13s}"]
    for r in records:
        ranks = r["ranks"]
        t_step = np.nanmean([x["mean_t_step"] for x in ranks]) if ranks else float("nan")
        t_comp = np.nanmean([x["mean_t_compress"] for x in ranks]) if ranks else float("nan")
        ratio = ranks[0]["bytes_vs_dense"] if ranks else float("nan")
        lines.append(f"{r['name']:{w}s}  {str(r['sync_mode']):9s} {r['final_test_acc']:9.4f} "
                     f"{r['best_test_acc']:9.4f} {t_step * 1e3:9.2f} {t_comp * 1e3:13.3f} {100 * ratio:13.2f}")
    return "\n".join(lines)
