"""What every chart of ``lbfl analyze --plots`` shares: constrained layout, wrapped titles, short
legend labels (at most :data:`LABEL_CHARS` characters, the parts every label shares left out; the
text tables keep the full labels), panel grids and writing a PNG safely."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

from ..files import atomic_path
from .load import RunData
from .seeds import BOOKKEEPING, differing, flat

LABEL_CHARS = 60
# a config section before a key (``train.lr``), not inside a word or a path
_SECTIONS = "run|data|model|train|sync|scaling|compress|batching|hetero|dist|telemetry"
_SECTION = re.compile(rf"(?<![\w.])(?:{_SECTIONS})\.(?=\w)")


def clip(label: str, n: int = LABEL_CHARS) -> str:
    """``label`` cut to ``n`` characters with an ellipsis, config sections dropped (``train.lr`` ->
    ``lr``)."""
    label = _SECTION.sub("", label)
    return label if len(label) <= n else label[:n - 1].rstrip() + "\u2026"


def shorten(labels: list[str], n: int = LABEL_CHARS) -> list[str]:
    """Legend labels without the parts every label shares: a series label such as ``none
    [data.partition=iid, train.momentum=0.9], lr 0.05`` is split at brackets, commas and `` + `` and
    only the differing parts are kept (in order, joined by ", "), then each is cut by :func:`clip`."""
    parts = [[t for t in re.split(r"\s*[\[\],]\s*|\s+\+\s+", x) if t] for x in labels]
    common = set.intersection(*(set(p) for p in parts)) if len(parts) > 1 else set()
    out = []
    for x, p in zip(labels, parts):
        kept = [t for t in p if t not in common]
        out.append(clip(", ".join(kept) if kept else x, n))
    return out if len(set(out)) == len(set(labels)) else [clip(x, n) for x in labels]


def run_labels(runs: list[RunData]) -> list[str]:
    """Legend labels: the run name, and where several runs share it, the config keys in which they
    differ (``name [seed=1, batch_size=32]``, the name shortened to leave room for them)."""
    out = []
    for r in runs:
        same = [x.config for x in runs if x.name == r.name]
        keys = differing(same, BOOKKEEPING - {"run.seed"}) if len(same) > 1 else []
        if not keys:
            out.append(clip(r.name))
            continue
        f = flat(r.config)
        out.append(clip(f"{clip(r.name, 24)} [" + ", ".join(f"{k}={f.get(k, '-')}" for k in keys) + "]"))
    return out


def wrap(text: str, width: int) -> str:
    return textwrap.fill(text, width)


def figure(plt, **kw):
    """A figure with constrained layout: titles, labels and outside legends keep their space."""
    return plt.subplots(layout="constrained", **kw)


def save(fig, path: Path, plt) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(path) as tmp:  # a fresh file, then a rename: never through a link planted at the name
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def legend_below(fig, ax, n: int) -> None:
    """One legend for the whole figure, under the axes (never over the curves), with as many columns
    as its labels fit across the figure."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fits = int(fig.get_figwidth() * 13 / (max(len(x) for x in labels) + 6))
        fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(len(labels), fits)), fontsize=7,
                   frameon=False)


def colours(plt, ax, n: int) -> None:
    """Distinct colours: tab10 for up to 10 lines, else tab20 (grids have more runs than 10)."""
    ax.set_prop_cycle(color=(plt.cm.tab10 if n <= 10 else plt.cm.tab20).colors)


def panels(plt, n: int, title: str, sharey: bool = True):
    """A grid of ``n`` small panels (3 per row), and the flat list of axes."""
    cols = min(3, max(1, n))
    rows = max(1, -(-n // cols))
    width = max(4.2 * cols, 6.4)
    fig, axes = figure(plt, nrows=rows, ncols=cols, figsize=(width, 2.8 * rows + 0.7), squeeze=False,
                       sharey=sharey)
    flat_axes = list(axes.reshape(-1))
    for ax in flat_axes[n:]:
        ax.set_visible(False)
    fig.suptitle(wrap(title, int(width * 9)))
    return fig, flat_axes
