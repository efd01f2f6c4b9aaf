"""PNG charts of runs (matplotlib, imported here so analysis works without it).

- ``convergence.png``: test accuracy and training loss of every run on one chart;
- ``grad_change.png``: the gradient change of Eq. 8 over steps, with each run's threshold;
- ``scale_factors.png``: kernel density of the applied scale factors per run (paper Fig. 7b/d);
- ``grad_norm_early.png``: the local gradient norm over the first steps, per batch size (Fig. 6).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

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


def _grad_change(runs, out, plt) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    thresholds = {}
    for run in runs:
        st = _steps(run)
        if st.get("grad_change") is None or not st["grad_change"].size:
            continue
        line, = ax.plot(st["step"] + 1, np.maximum(st["grad_change"], 1e-6), alpha=0.7, lw=0.8, label=run.name)
        t = run.config.get("scaling", {}).get("threshold", 0.5)
        thresholds.setdefault(float(t), line.get_color())
    for t, color in thresholds.items():
        ax.axhline(t, ls="--", color="k", lw=1)
        ax.annotate(f"threshold {t:g}", (0.99, t), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=8)
    ax.set(xlabel="step", ylabel="gradient change delta (Eq. 8)", yscale="log",
           title="Gradient change and critical-phase threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "grad_change.png", plt)


def _scale_factors(runs, out, plt) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    series = [(run.name, _steps(run).get("scale_factor")) for run in runs]
    series = [(n, s[np.isfinite(s)]) for n, s in series if s is not None and s.size]
    if series:
        lo = min(float(s.min()) for _, s in series)
        hi = max(float(s.max()) for _, s in series)
        pad = max(0.05 * (hi - lo), 0.05)
        grid = np.linspace(lo - pad, hi + pad, 600)
        for name, s in series:
            ax.plot(grid, gaussian_kde(s, grid), label=f"{name} (mean {s.mean():.2f})")
    ax.set(xlabel="applied scale factor", ylabel="density", title="Scale factors applied (KDE over steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "scale_factors.png", plt)


def _grad_norm_early(runs, out, plt) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    for run in runs:
        st = _steps(run)
        if st.get("grad_norm_sq") is None or not st["grad_norm_sq"].size:
            continue
        n = min(EARLY_STEPS, st["grad_norm_sq"].size)
        b = int(st["batch_size"][0]) if "batch_size" in st else 0
        gb = (run.summary or {}).get("global_batch")
        label = f"{run.name} (b={b}" + (f", B={gb})" if gb else ")")
        ax.plot(st["step"][:n] + 1, np.sqrt(st["grad_norm_sq"][:n]), alpha=0.8, lw=0.9, label=label)
    ax.set(xlabel="step", ylabel="|g| of rank 0's local gradient", yscale="log",
           title=f"Gradient norm over the first {EARLY_STEPS} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "grad_norm_early.png", plt)


def write_plots(runs: list[RunData], out_dir: str | Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # optional dependency
        raise RuntimeError("--plots needs matplotlib: pip install 'lbfl_mpi[plots]'") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [f(runs, out, plt) for f in (_convergence, _grad_change, _scale_factors, _grad_norm_early)]
