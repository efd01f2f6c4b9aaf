"""PNG charts of runs (matplotlib, imported here so analysis works without it).

- ``convergence.png``: test accuracy and training loss of every run on one chart;
- ``grad_change.png``: the gradient change of Eq. 8 over steps, one panel per run with its threshold;
- ``scale_factors.png``: kernel density of the applied scale factors, one panel per run that applies
  a transform (paper Fig. 7b/d);
- ``grad_norm_early.png``: the local gradient norm over the first steps per batch size, from the
  unscaled runs when there are any (Fig. 6);
- ``accuracy_vs_batch.png``: final test accuracy against the global batch B, one line per lr-rule
  series with the std over seeds as error bars (Fig. 3; series as in batch.py), only when the runs
  have at least 2 distinct B.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .batch import Series, batch_series, batches
from .load import RunData

EARLY_STEPS = 100


def gaussian_kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density of ``samples`` on ``grid`` with Scott's bandwidth n^(-1/5) * std;
    a constant sample gets a narrow kernel (1 % of its value) instead of a zero bandwidth."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros_like(grid, dtype=np.float64)
    bw = x.std(ddof=1) * x.size ** (-0.2) if x.size > 1 else 0.0
    if not bw > 0:
        bw = max(abs(float(x[0])) * 0.01, 1e-3)
    z = (grid[:, None] - x[None, :]) / bw
    return np.exp(-0.5 * z**2).sum(axis=1) / (x.size * bw * np.sqrt(2 * np.pi))


def _steps(run: RunData) -> dict:
    return run.ranks[0].steps if run.ranks else {}


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _convergence(runs, out, plt) -> Path:
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for ax in (ax_acc, ax_loss):  # 20 distinct colours: grids have more runs than the default 10
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for run in runs:
        ev = run.eval_curve()
        if ev.get("step") is not None and ev["step"].size:
            ax_acc.plot(ev["step"] + 1, ev["test_acc"], marker=".", label=run.name)
        st = _steps(run)
        if st.get("step") is not None and st["step"].size:
            ax_loss.plot(st["step"] + 1, st["loss"], alpha=0.7, label=run.name)
    ax_acc.set(xlabel="step", ylabel="test accuracy", title="Convergence (global model)")
    ax_loss.set(xlabel="step", ylabel="training loss (rank 0)", yscale="log", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "convergence.png", plt)


def _panels(plt, n: int, title: str, sharey: bool = True):
    """A grid of ``n`` small panels (3 per row), and the flat list of axes."""
    cols = min(3, max(1, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows + 0.6), squeeze=False, sharey=sharey)
    flat = list(axes.reshape(-1))
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, flat


def _method(run: RunData) -> str:
    return run.config.get("scaling", {}).get("method", "none")


def _grad_change(runs, out, plt) -> Path:
    shown = [r for r in runs if _steps(r).get("grad_change") is not None and _steps(r)["grad_change"].size]
    fig, axes = _panels(plt, len(shown), "Gradient change delta (Eq. 8) and the critical-phase threshold")
    for ax, run in zip(axes, shown):
        st = _steps(run)
        t = float(run.config.get("scaling", {}).get("threshold", 0.5))
        delta = np.maximum(st["grad_change"], 1e-6)
        ax.plot(st["step"] + 1, delta, lw=0.7)
        ax.axhline(t, ls="--", color="k", lw=1)
        share = float(np.mean(st["phase"])) if "phase" in st else float(np.mean(delta >= t))
        ax.set_title(f"{run.name}: threshold {t:g}, {100 * share:.0f} % critical", fontsize=8)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    return _save(fig, out / "grad_change.png", plt)


def _scale_factors(runs, out, plt) -> Path:
    series = [(run.name, _steps(run).get("scale_factor")) for run in runs if _method(run) != "none"]
    # finite values only, and only non-empty series: a run stopped on a non-finite value may have none
    series = [(n, s[np.isfinite(s)]) for n, s in series if s is not None]
    series = [(n, s) for n, s in series if s.size]
    fig, axes = _panels(plt, max(1, len(series)), "Applied scale factors: kernel density over steps", sharey=False)
    for ax, (name, s) in zip(axes, series):
        lo, hi = float(s.min()), float(s.max())
        pad = max(0.1 * (hi - lo), 0.05 * max(abs(hi), 1.0))
        grid = np.linspace(lo - pad, hi + pad, 400)
        ax.plot(grid, gaussian_kde(s, grid))
        ax.set_title(f"{name}: mean {s.mean():.2f}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if not series:
        axes[0].set_title("no run applied a gradient transform", fontsize=8)
    return _save(fig, out / "scale_factors.png", plt)


def _grad_norm_early(runs, out, plt) -> Path:
    """Unscaled runs only when there are any, so that the curves differ by batch size alone."""
    plain = [r for r in runs if _method(r) == "none"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for run in plain or runs:
        st = _steps(run)
        if st.get("grad_norm_sq") is None or not st["grad_norm_sq"].size:
            continue
        n = min(EARLY_STEPS, st["grad_norm_sq"].size)
        b = int(st["batch_size"][0]) if "batch_size" in st else 0
        gb = (run.summary or {}).get("global_batch")
        label = f"{run.name} (b={b}" + (f", B={gb})" if gb else ")")
        ax.plot(st["step"][:n] + 1, np.sqrt(st["grad_norm_sq"][:n]), alpha=0.8, lw=0.9, label=label)
    ax.set(xlabel="step", ylabel="|g| of rank 0's local gradient", yscale="log",
           title=f"Gradient norm over the first {EARLY_STEPS} steps" + (" (unscaled runs)" if plain else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "grad_norm_early.png", plt)


def _accuracy_vs_batch(series: list[Series], out, plt) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for s in series:
        b = [p["global_batch"] for p in s.points]
        acc = [p["final_test_acc_mean"] for p in s.points]
        err = [p["final_test_acc_std"] if p["n"] > 1 else 0.0 for p in s.points]
        ax.errorbar(b, acc, yerr=np.nan_to_num(err), marker="o", capsize=3, lw=1.2, label=s.label)
    bs = batches(series)
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.minorticks_off()
    ax.set(xlabel="global batch B", ylabel="final test accuracy",
           title="Final test accuracy against the global batch (error bars: std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "accuracy_vs_batch.png", plt)


def write_plots(runs: list[RunData], out_dir: str | Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # optional dependency
        raise RuntimeError("--plots needs matplotlib: pip install 'lbfl_mpi[plots]'") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [f(runs, out, plt) for f in (_convergence, _grad_change, _scale_factors, _grad_norm_early)]
    series = batch_series(runs)
    if len(batches(series)) > 1:
        written.append(_accuracy_vs_batch(series, out, plt))
    return written
