"""PNG charts of runs (matplotlib, imported here so analysis works without it)."""
from __future__ import annotations

from pathlib import Path

from .load import RunData


def write_plots(runs: list[RunData], out_dir: str | Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # optional dependency
        raise RuntimeError("--plots needs matplotlib: pip install 'lbfl_mpi[plots]'") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        ev = run.eval_curve()
        if ev.get("step") is not None and ev["step"].size:
            ax_acc.plot(ev["step"] + 1, ev["test_acc"], marker=".", label=run.name)
        st = run.ranks[0].steps if run.ranks else {}
        if st.get("step") is not None and st["step"].size:
            ax_loss.plot(st["step"] + 1, st["loss"], alpha=0.7, label=run.name)
    ax_acc.set(xlabel="step", ylabel="test accuracy", title="Convergence (global model)")
    ax_loss.set(xlabel="step", ylabel="training loss (rank 0)", yscale="log", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "convergence.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written
