"""What a run cost, as PNG charts (called by plots.write_plots):

- ``accuracy_vs_samples.png``: test accuracy (validation accuracy for a run with data.val_fraction)
  against the training samples seen by all ranks when each evaluation was taken;
- ``accuracy_vs_bytes.png``: test accuracy against the bytes all ranks had handed to MPI by then
  (``bytes_sent``; a log axis when the runs' totals differ by more than 20x);
- ``time_breakdown.png``: per rank, stacked seconds of compute (``t_compute`` + ``t_teacher``), data
  (``t_data``), sync (``t_sync`` + ``t_compress``), straggle (``t_straggle``), eval (``t_eval``) and
  other (the rest of the wall time: checkpoints, HDF5 writes, the loop itself), one panel per run;
- ``batch_allocation.png``: per rank batch size against the step, one panel per run whose batches
  changed (dynamic batching), only when there is such a run.

The wall time is rank 0's ``wall_time_s`` from summary.json (the ranks run in lock-step); without a
summary, the largest per-rank sum of ``t_step`` and ``t_eval``.
"""
from __future__ import annotations

import numpy as np

from .load import RunData, as_float
from .plot_layout import colours, figure, legend_below, panels, run_labels, save, wrap

PARTS = ("compute", "data", "sync", "straggle", "eval", "other")
COLOURS = {"compute": "tab:blue", "data": "tab:cyan", "sync": "tab:orange", "straggle": "tab:red",
           "eval": "tab:green", "other": "tab:gray"}


def _cum_at_evals(run: RunData, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(sum over ranks of the running total of ``column`` after each evaluated step, the accuracy
    monitored during training: validation where the run has a split, else test); evaluations after
    the last step every rank logged are left out."""
    steps, acc, _ = run.monitored()
    if not acc.size or not steps.size or not run.ranks:
        return np.array([]), np.array([])
    total = np.zeros(steps.size)
    keep = np.ones(steps.size, dtype=bool)
    for r in run.ranks:
        st, col = r.steps.get("step"), r.steps.get(column)
        if st is None or col is None or not st.size:
            return np.array([]), np.array([])
        n = min(st.size, col.size)
        cum = np.cumsum(col[:n].astype(np.float64))
        at = np.searchsorted(st[:n], steps)
        ok = (at < n) & (st[:n][np.minimum(at, n - 1)] == steps)
        keep &= ok
        total += np.where(ok, cum[np.minimum(at, n - 1)], 0.0)
    return total[keep], acc[keep]


def time_parts(run: RunData) -> list[dict[str, float]]:
    """Per rank, seconds in each of PARTS; ``other`` = wall time - the rest (never below 0)."""
    def total(r, *cols):
        return float(sum(np.nansum(r.steps[c]) for c in cols if c in r.steps))

    parts = []
    for r in run.ranks:
        t_eval = r.eval.get("t_eval")
        parts.append({"compute": total(r, "t_compute", "t_teacher"), "data": total(r, "t_data"),
                      "sync": total(r, "t_sync", "t_compress"), "straggle": total(r, "t_straggle"),
                      "eval": float(np.nansum(t_eval)) if t_eval is not None else 0.0})
    wall = as_float((run.summary or {}).get("wall_time_s"))
    if np.isnan(wall):
        wall = max((total(r, "t_step") + p["eval"] for r, p in zip(run.ranks, parts)), default=0.0)
    for p in parts:
        p["other"] = max(wall - sum(p.values()), 0.0)
    return parts


def _accuracy_vs(runs, out, plt, column: str, xlabel: str, name: str):
    curves = [(label, *_cum_at_evals(r, column)) for r, label in zip(runs, run_labels(runs))]
    curves = [c for c in curves if c[1].size]
    if not curves:
        return None
    fig, ax = figure(plt, figsize=(8, 4.4 + 0.18 * -(-len(curves) // 3)))
    colours(plt, ax, len(curves))
    for label, x, acc in curves:
        ax.plot(x, acc, marker=".", label=label)
    finals = [x[-1] for _, x, _ in curves if x[-1] > 0]
    if column == "bytes_sent":
        from matplotlib.ticker import EngFormatter

        if finals and max(finals) > 20 * min(finals):
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.set(xlabel=xlabel, ylabel="accuracy (validation where a run has a split, else test)",
           title=wrap(f"Accuracy against {xlabel}", 80))
    ax.grid(alpha=0.3)
    legend_below(fig, ax, len(curves))
    return save(fig, out / name, plt)


def _time_breakdown(runs, out, plt):
    shown = [r for r in runs if r.ranks]
    if not shown:
        return None
    fig, axes = panels(plt, len(shown), "Where the wall time went, per rank (seconds)", sharey=False)
    for i, (ax, run, label) in enumerate(zip(axes, shown, run_labels(shown))):
        parts = time_parts(run)
        ranks = [r.rank for r in run.ranks]
        bottom = np.zeros(len(ranks))
        for part in PARTS:
            h = np.array([p[part] for p in parts])
            ax.bar(ranks, h, bottom=bottom, width=0.6, color=COLOURS[part], label=part)
            bottom += h
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("rank", fontsize=8)
        if i % 3 == 0:
            ax.set_ylabel("seconds", fontsize=8)
        ax.set_title(wrap(f"{label}: {bottom.max():.1f} s", 45), fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(PARTS), fontsize=7, frameon=False)
    return save(fig, out / "time_breakdown.png", plt)


def _changed(run: RunData) -> bool:
    return any(r.steps.get("batch_size") is not None and np.unique(r.steps["batch_size"]).size > 1
               for r in run.ranks)


def _batch_allocation(runs, out, plt):
    shown = [r for r in runs if _changed(r) or run_is_dynamic(r)]
    if not shown:
        return None
    fig, axes = panels(plt, len(shown), "Batch allocation over steps (dynamic batching): each rank's batch size",
                       sharey=False)
    for i, (ax, run, label) in enumerate(zip(axes, shown, run_labels(shown))):
        total = None
        for j, r in enumerate(run.ranks):
            st, b = r.steps.get("step"), r.steps.get("batch_size")
            if st is not None and b is not None and st.size:
                # the batch of the step that brought the count of steps done from s to s + 1
                ax.plot(st + 1, b, drawstyle="steps-pre", lw=1.4, ls=("-", "--", "-.", ":")[j % 4],
                        label=f"rank {r.rank}")
                total = b.astype(np.int64) if total is None else total[:b.size] + b[:total.size]
        if total is not None and len(run.ranks) > 1:
            ax.plot(np.arange(1, total.size + 1), total, drawstyle="steps-pre", lw=0.8, color="0.5",
                    label="global batch")
        ax.set_xlabel("steps done", fontsize=8)
        if i % 3 == 0:
            ax.set_ylabel("batch size (samples)", fontsize=8)
        ax.set_title(wrap(label, 45), fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return save(fig, out / "batch_allocation.png", plt)


def run_is_dynamic(run: RunData) -> bool:
    return run.config.get("batching", {}).get("mode") == "dynamic"


def cost_plots(runs: list[RunData], out, plt) -> list:
    written = [_accuracy_vs(runs, out, plt, "batch_size", "training samples seen (all ranks)",
                            "accuracy_vs_samples.png"),
               _accuracy_vs(runs, out, plt, "bytes_sent", "bytes sent (all ranks)", "accuracy_vs_bytes.png"),
               _time_breakdown(runs, out, plt), _batch_allocation(runs, out, plt)]
    return [p for p in written if p is not None]
