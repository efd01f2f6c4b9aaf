"""The mechanism readings' chart, ``readings.png`` (runs with train.eval_train_samples or
train.eval_sharpness_iters): against the steps, train accuracy on the fixed train probe (solid) beside
the monitored accuracy (validation where data.val_fraction holds a split out, else test; dashed), and
the sharpness, the top Hessian eigenvalue by power iteration (log scale). One colour per run name, so
the seeds of one arm share it; the legend names each arm once with its number of runs. The step axis
is logarithmic when the runs' last evaluations lie more than :data:`LOG_STEPS_RATIO` x apart. A run
evaluated once (train.eval_every = 0) is a point: train accuracy a dot, the monitored accuracy a
cross. Without any sharpness reading the right panel says it was not measured."""
from __future__ import annotations

import numpy as np

from .load import RunData
from .plot_layout import clip, figure, save

LOG_STEPS_RATIO = 4  # a log step axis when the longest run evaluates this many times later than the shortest


def _finite(ev: dict, col: str) -> bool:
    x = ev.get(col)
    return x is not None and np.isfinite(np.asarray(x, dtype=np.float64)).any()


def has_readings(run: RunData) -> bool:
    ev = run.eval_curve()
    return _finite(ev, "train_acc") or _finite(ev, "sharpness")


def readings_plot(runs: list[RunData], out, plt):
    shown = [r for r in runs if has_readings(r)]
    if not shown:
        return None
    names = list(dict.fromkeys(r.name for r in shown))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colour = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    fig, (ax_acc, ax_sharp) = figure(plt, ncols=2, figsize=(11, 4.4 + 0.18 * -(-len(names) // 3)))
    kinds = set()
    for run in shown:
        ev, c = run.eval_curve(), colour[run.name]
        steps, acc, kind = run.monitored()
        kinds.add(kind)
        x = np.asarray(ev["step"]) + 1
        if _finite(ev, "train_acc"):
            ax_acc.plot(x, ev["train_acc"], color=c, lw=1.2, alpha=0.8, marker="o" if x.size == 1 else None)
        if steps.size:
            ax_acc.plot(steps + 1, acc, color=c, lw=1.0, ls="--", alpha=0.8, marker="x" if steps.size == 1 else None)
        if _finite(ev, "sharpness"):
            s = np.asarray(ev["sharpness"], dtype=np.float64)
            ok = np.isfinite(s) & (s > 0)
            ax_sharp.plot(x[ok], s[ok], color=c, lw=1.0, marker=".", alpha=0.8)
    monitored = " / ".join({"val": "validation"}.get(k, k) for k in sorted(kinds, reverse=True))
    ax_acc.set(xlabel="steps done", ylabel="accuracy",
               title=f"Train accuracy (solid, train probe) and {monitored} accuracy (dashed)")
    ax_sharp.set(xlabel="steps done", ylabel="top Hessian eigenvalue", yscale="log",
                 title="Sharpness (power iteration on the train probe)")
    if not any(_finite(r.eval_curve(), "sharpness") for r in shown):
        ax_sharp.text(0.5, 0.5, "not measured (train.eval_sharpness_iters = 0)", transform=ax_sharp.transAxes,
                      ha="center", va="center", fontsize=9, color="0.4")
    last = [int(np.max(r.eval_curve()["step"])) + 1 for r in shown if np.size(r.eval_curve().get("step", []))]
    wide = bool(last) and max(last) > LOG_STEPS_RATIO * min(last)
    for ax in (ax_acc, ax_sharp):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
        if wide:  # runs of very different lengths (a small and a large batch): each one readable
            ax.set_xscale("log")
    counts = {n: sum(r.name == n for r in shown) for n in names}
    handles = [plt.Line2D([], [], color=colour[n], lw=2) for n in names]
    labels = [clip(f"{n} ({counts[n]} run{'s' if counts[n] > 1 else ''})") for n in names]
    fits = int(fig.get_figwidth() * 13 / (max(len(x) for x in labels) + 6))
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(len(labels), fits)), fontsize=7,
               frameon=False)
    return save(fig, out / "readings.png", plt)
