"""PNG charts of runs (matplotlib, imported here so analysis works without it).

- ``convergence.png``: test accuracy and training loss of every run on one chart;
- ``grad_change.png``: the gradient change of Eq. 8 over steps, one panel per run with its threshold;
- ``scale_factors.png``: bars of the share of steps at each applied scale factor, one panel per run
  that applies a transform (paper Fig. 7b/d; a factor with more than :data:`MAX_BARS` distinct
  values, e.g. ``gain``, is binned);
- ``grad_norm_early.png``: the local gradient norm over the first steps per batch size, from the
  unscaled runs when there are any (Fig. 6);
- ``accuracy_vs_batch.png``: final test accuracy against the global batch B, one line per lr-rule
  series (Fig. 3; series as in batch.py), only when the runs have at least 2 distinct B; error bars
  (std over seeds) only where a point has 2 or more seeds; dotted with hollow markers in the same
  colour, the last train accuracy on the probe where train.eval_train_samples logged it;
- ``accuracy_vs_samples.png``, ``accuracy_vs_bytes.png``, ``time_breakdown.png`` and
  ``batch_allocation.png``: see plots_cost.py;
- ``federated.png`` (runs with ``fl.clients > 0``): see plots_fl.py;
- ``readings.png`` (runs with train accuracy or sharpness readings): see plots_readings.py.

Every figure uses matplotlib's constrained layout, long titles are wrapped and legend labels are cut
to :data:`LABEL_CHARS` characters (the text tables keep the full labels), so nothing is clipped.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .batch import Series, batch_series, batches
from .load import RunData
from .plot_layout import colours, figure, legend_below, panels, run_labels, save, shorten, wrap

EARLY_STEPS = 100
MAX_BARS = 12  # distinct factors drawn as one bar each; more are binned


def factor_shares(samples: np.ndarray, max_bars: int = MAX_BARS, bins: int = 20):
    """Share of steps at each factor: (values, shares, discrete). With at most ``max_bars`` distinct
    finite values (to 6 significant digits) one bar per value, else ``bins`` equal-width bins whose
    centres are the values. The shares sum to 1 over the finite samples."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.array([]), np.array([]), True
    rounded = np.array([float(f"{v:.6g}") for v in x])
    values, counts = np.unique(rounded, return_counts=True)
    if values.size <= max_bars:
        return values, counts / x.size, True
    counts, edges = np.histogram(x, bins=bins)
    return (edges[:-1] + edges[1:]) / 2, counts / x.size, False


def _steps(run: RunData) -> dict:
    return run.ranks[0].steps if run.ranks else {}


def _convergence(runs, out, plt) -> Path:
    fig, (ax_acc, ax_loss) = figure(plt, ncols=2, figsize=(11, 4.2 + 0.18 * -(-len(runs) // 3)))
    for ax in (ax_acc, ax_loss):
        colours(plt, ax, len(runs))
    kinds = set()
    for run, label in zip(runs, run_labels(runs)):
        steps, acc, kind = run.monitored()
        kinds.add(kind)
        if steps.size:
            ax_acc.plot(steps + 1, acc, marker=".", label=label + (" (validation)" if kind == "val" else ""))
        else:
            ax_acc.plot([], [], label=label)  # keeps the colours of both panels in step
        st = _steps(run)
        if st.get("step") is not None and st["step"].size:
            ax_loss.plot(st["step"] + 1, st["loss"], alpha=0.7)
        else:
            ax_loss.plot([], [])
    ax_acc.set(xlabel="steps done", ylabel=" / ".join(f"{k} accuracy" for k in sorted(kinds, reverse=True)),
               title="Convergence (global model)")
    ax_loss.set(xlabel="steps done", ylabel="training loss (rank 0)", yscale="log", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    legend_below(fig, ax_acc, len(runs))
    return save(fig, out / "convergence.png", plt)


def _method(run: RunData) -> str:
    return run.config.get("scaling", {}).get("method", "none")


def _grad_change(runs, out, plt) -> Path:
    shown = [r for r in runs if _steps(r).get("grad_change") is not None and _steps(r)["grad_change"].size]
    fig, axes = panels(plt, max(1, len(shown)), "Gradient change delta (Eq. 8, rank 0) and the critical-phase "
                       "threshold (dashed)")
    for i, (ax, run, label) in enumerate(zip(axes, shown, run_labels(shown))):
        st = _steps(run)
        t = float(run.config.get("scaling", {}).get("threshold", 0.5))
        delta = np.maximum(st["grad_change"], 1e-6)
        ax.plot(st["step"] + 1, delta, lw=0.7)
        ax.axhline(t, ls="--", color="k", lw=1)
        share = float(np.mean(st["phase"])) if "phase" in st else float(np.mean(delta >= t))
        ax.set_title(wrap(f"{label}: threshold {t:g}, {100 * share:.0f} % critical", 45), fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("steps done", fontsize=8)
        if i % 3 == 0:
            ax.set_ylabel("delta (Eq. 8)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if not shown:
        axes[0].set_title("no run logged grad_change", fontsize=8)
    return save(fig, out / "grad_change.png", plt)


def _scale_factors(runs, out, plt) -> Path:
    scaled = [run for run in runs if _method(run) != "none"]
    series = [(label, _steps(run).get("scale_factor")) for run, label in zip(scaled, run_labels(scaled))]
    # finite values only, and only non-empty series: a run stopped on a non-finite value may have none
    series = [(n, s[np.isfinite(s)]) for n, s in series if s is not None]
    series = [(n, s) for n, s in series if s.size]
    fig, axes = panels(plt, max(1, len(series)), "Applied scale factors (rank 0): share of steps at each factor",
                       sharey=False)
    for i, (ax, (name, s)) in enumerate(zip(axes, series)):
        values, shares, discrete = factor_shares(s)
        if discrete:  # one bar per value, at evenly spaced positions labelled with the value
            pos = np.arange(values.size)
            ax.bar(pos, shares, width=0.6)
            ax.set_xticks(pos, [f"{v:g}" for v in values])
            for p, sh in zip(pos, shares):
                ax.annotate(f"{100 * sh:.0f} %", (p, sh), ha="center", va="bottom", fontsize=7)
        else:
            ax.bar(values, shares, width=(values[1] - values[0]) * 0.9)
        ax.set_ylim(0, 1.12)
        ax.set_title(wrap(f"{name}: mean {s.mean():.2f}", 45), fontsize=8)
        ax.set_xlabel("scale factor" + ("" if discrete else " (binned)"), fontsize=8)
        if i % 3 == 0:
            ax.set_ylabel("share of steps", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=7)
    if not series:
        axes[0].set_title("no run applied a gradient transform", fontsize=8)
    return save(fig, out / "scale_factors.png", plt)


def _grad_norm_early(runs, out, plt) -> Path:
    """Unscaled runs only when there are any, so that the curves differ by batch size alone."""
    plain = [r for r in runs if _method(r) == "none"] or runs
    fig, ax = figure(plt, figsize=(8, 4.4 + 0.18 * -(-len(plain) // 3)))
    colours(plt, ax, len(plain))
    for run, name in zip(plain, run_labels(plain)):
        st = _steps(run)
        if st.get("grad_norm_sq") is None or not st["grad_norm_sq"].size:
            continue
        n = min(EARLY_STEPS, st["grad_norm_sq"].size)
        b = int(st["batch_size"][0]) if "batch_size" in st else 0
        gb = (run.summary or {}).get("global_batch")
        label = f"{name} (b={b}" + (f", B={gb})" if gb else ")")
        ax.plot(st["step"][:n] + 1, np.sqrt(st["grad_norm_sq"][:n]), alpha=0.8, lw=0.9, label=label)
    unscaled = " (unscaled runs)" if any(_method(r) == "none" for r in runs) else ""
    ax.set(xlabel="steps done", ylabel="|g| of rank 0's local gradient", yscale="log",
           title=f"Gradient norm over the first {EARLY_STEPS} steps{unscaled}")
    ax.grid(alpha=0.3)
    legend_below(fig, ax, len(plain))
    return save(fig, out / "grad_norm_early.png", plt)


def _accuracy_vs_batch(series: list[Series], out, plt) -> Path:
    fig, ax = figure(plt, figsize=(8, 4.6 + 0.18 * -(-len(series) // 3)))
    colours(plt, ax, len(series))
    seeded = any(p["n"] > 1 for s in series for p in s.points)
    trained = False
    for s, label in zip(series, shorten([s.label for s in series])):
        b = [p["global_batch"] for p in s.points]
        acc = [p["final_test_acc_mean"] for p in s.points]
        if seeded:
            err = [p["final_test_acc_std"] if p["n"] > 1 else 0.0 for p in s.points]
            colour = ax.errorbar(b, acc, yerr=np.nan_to_num(err), marker="o", capsize=3, lw=1.2,
                                 label=label).lines[0].get_color()
        else:
            colour = ax.plot(b, acc, marker="o", lw=1.2, label=label)[0].get_color()
        train = [p.get("final_train_acc_mean", np.nan) for p in s.points]
        if np.isfinite(train).any():  # train accuracy on the probe beside the test accuracy (Fig. 3's gap)
            trained = True
            ax.plot(b, train, marker="o", mfc="none", ls=":", lw=1.0, color=colour)
    bs = batches(series)
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.minorticks_off()
    note = " (error bars: std over seeds)" if seeded else " (one seed per point)"
    if trained:
        note += "; dotted, hollow: train accuracy on the probe"
    ax.set(xlabel="global batch B", ylabel="final accuracy" if trained else "final test accuracy",
           title=wrap("Final test accuracy against the global batch" + note, 80))
    ax.grid(alpha=0.3)
    legend_below(fig, ax, len(series))
    return save(fig, out / "accuracy_vs_batch.png", plt)


def write_plots(runs: list[RunData], out_dir: str | Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # optional dependency
        raise RuntimeError("--plots needs matplotlib: pip install 'lbfl_mpi[plots]'") from e
    from .plots_batch import adaptive_batch_plot
    from .plots_cost import cost_plots
    from .plots_fl import fl_plots
    from .plots_readings import readings_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [f(runs, out, plt) for f in (_convergence, _grad_change, _scale_factors, _grad_norm_early)]
    series = batch_series(runs)
    if len(batches(series)) > 1:
        written.append(_accuracy_vs_batch(series, out, plt))
    extra = [p for p in (adaptive_batch_plot(runs, out, plt), readings_plot(runs, out, plt)) if p is not None]
    return written + cost_plots(runs, out, plt) + fl_plots(runs, out, plt) + extra
