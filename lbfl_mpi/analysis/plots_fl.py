"""Charts of federated runs (``fl.clients > 0``; the rank files' ``clients`` and ``rounds`` groups),
written by plots.write_plots when at least one run has them, all in ``federated.png``:

- test accuracy against rounds done;
- participation: how many rounds each client trained in (a histogram over clients);
- client drift: per round, the spread (standard deviation) of the round's client delta norms
  |y_i - x|, next to their mean;
- straggler share per round: (slowest rank's training - mean rank's training) / the round's time, the
  part of a round the other ranks spend waiting for the slowest.
"""
from __future__ import annotations

import numpy as np

from .load import RunData
from .plot_layout import colours, figure, legend_below, run_labels, save


def federated(run: RunData) -> bool:
    return any(r.clients.get("round") is not None and len(r.clients["round"]) for r in run.ranks)


def _clients(run: RunData) -> dict[str, np.ndarray]:
    """Every rank's ``clients`` rows together, with the rank as a column."""
    cols = [r.clients for r in run.ranks if r.clients.get("round") is not None]
    out = {k: np.concatenate([c[k] for c in cols]) for k in ("round", "client", "t_train", "delta_norm")}
    out["rank"] = np.concatenate([np.full(len(c["round"]), r.rank) for r, c in zip(run.ranks, cols)])
    return out


def participation(run: RunData) -> np.ndarray:
    """Rounds each client (0 .. fl.clients - 1) trained in."""
    n = int(run.config.get("fl", {}).get("clients", 0)) or 0
    c = _clients(run)["client"].astype(int)
    return np.bincount(c, minlength=max(n, int(c.max()) + 1 if c.size else 0))


def drift(run: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, std) of the client delta norms of each round (std: population, over the round's
    clients)."""
    c = _clients(run)
    rounds = np.unique(c["round"])
    mean = np.array([c["delta_norm"][c["round"] == r].mean() for r in rounds])
    std = np.array([c["delta_norm"][c["round"] == r].std() for r in rounds])
    return rounds, mean, std


def straggler_share(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, share): (max_r T_r - mean_r T_r) / t_round, T_r the rank's summed t_train in the round
    (0 for a rank that trained none), t_round from rank 0's ``rounds`` rows."""
    c = _clients(run)
    rounds_row = next((r.rounds for r in run.ranks if r.rounds.get("round") is not None and len(r.rounds["round"])),
                      None)
    if rounds_row is None:
        return np.array([]), np.array([])
    ranks = len(run.ranks)
    shares = []
    for rnd, t_round in zip(rounds_row["round"], rounds_row["t_round"]):
        per = np.array([c["t_train"][(c["round"] == rnd) & (c["rank"] == r)].sum() for r in range(ranks)])
        shares.append((per.max() - per.mean()) / t_round if t_round > 0 else np.nan)
    return rounds_row["round"], np.array(shares)


def fl_plots(runs: list[RunData], out, plt) -> list:
    fed = [r for r in runs if federated(r)]
    if not fed:
        return []
    labels = run_labels(fed)
    fig, axes = figure(plt, nrows=2, ncols=2, figsize=(11, 7.2 + 0.18 * -(-len(fed) // 3)))
    (ax_acc, ax_part), (ax_drift, ax_strag) = axes
    for ax in (ax_acc, ax_part, ax_drift, ax_strag):
        colours(plt, ax, len(fed))
    for run, label in zip(fed, labels):
        period = int(run.config.get("sync", {}).get("period", 1)) or 1
        ev = run.eval_curve()
        ax_acc.plot((ev["step"] + 1) / period, ev["test_acc"], marker=".", label=label)
        counts = participation(run)
        ax_part.hist(counts, bins=np.arange(counts.max() + 2) - 0.5, histtype="step", linewidth=1.5)
        rnd, mean, std = drift(run)
        (line,) = ax_drift.plot(rnd, std, label=label)
        ax_drift.plot(rnd, mean, linestyle=":", alpha=0.6, color=line.get_color())
        rs, share = straggler_share(run)
        ax_strag.plot(rs, share)
    ax_acc.set(xlabel="rounds done", ylabel="test accuracy", title="Accuracy against rounds")
    ax_part.set(xlabel="rounds a client trained in", ylabel="clients", title="Participation")
    ax_drift.set(xlabel="round", ylabel="|y_i - x| (solid: std, dotted: mean)", title="Client drift")
    ax_strag.set(xlabel="round", ylabel="share of the round", title="Waiting for the slowest rank")
    for ax in (ax_acc, ax_part, ax_drift, ax_strag):
        ax.grid(alpha=0.3)
    legend_below(fig, ax_acc, len(fed))
    return [save(fig, out / "federated.png", plt)]
