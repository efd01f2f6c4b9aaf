"""The adaptive global batch's chart (``batching.global_mode = adaptive``), ``adaptive_batch.png``:
the global batch B (column ``global_batch``) and the noise scale phi (``noise_scale``, log scale)
against steps, one line per run, from rank 0's file (every rank logs the same B and, under BSP,
the same phi)."""
from __future__ import annotations

import numpy as np

from .load import RunData
from .plot_layout import colours, figure, legend_below, run_labels, save


def adaptive(run: RunData) -> bool:
    return run.config.get("batching", {}).get("global_mode") == "adaptive"


def adaptive_batch_plot(runs: list[RunData], out, plt):
    shown = [r for r in runs if adaptive(r) and r.ranks and r.ranks[0].steps.get("global_batch") is not None]
    if not shown:
        return None
    fig, (top, bottom) = figure(plt, nrows=2, sharex=True, figsize=(6.4, 5.2))
    for ax in (top, bottom):
        colours(plt, ax, len(shown))
    for run, label in zip(shown, run_labels(shown)):
        st = run.ranks[0].steps
        top.plot(st["step"] + 1, st["global_batch"], drawstyle="steps-pre", lw=1.4, label=label)
        phi = np.asarray(st["noise_scale"], dtype=np.float64)
        ok = np.isfinite(phi) & (phi > 0)
        bottom.plot(st["step"][ok] + 1, phi[ok], lw=1.0)
    top.set_ylabel("global batch B (samples)", fontsize=8)
    top.set_title("Adaptive global batch: B and the noise scale phi", fontsize=9)
    bottom.set_ylabel("noise scale phi (samples)", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_xlabel("steps done", fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    legend_below(fig, top, len(shown))
    return save(fig, out / "adaptive_batch.png", plt)
