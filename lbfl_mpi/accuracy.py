"""Warnings about a finished run's test accuracy: ended near chance, or far below its best.

A run that diverged or never learned still completes (exit 0) and writes a summary; these rules make
``lbfl train`` (rank 0, after its summary line) and ``lbfl analyze`` (per run, and ``accuracy_warning``
in ``--json``) say so in one line. With C classes, chance is 1/C, and

- *near chance*: ``final <= min(1.5 / C, 1 / C + 0.05)`` (0.15 for 10 classes, 0.55 for 2, 0.015 for 100);
- *far below its best*: ``final < best - 0.2`` or ``final < best / 2``.

A non-finite accuracy (no evaluation, or a non-finite loss) gives no warning here: the run's outcome
says what happened.
"""
from __future__ import annotations

import math

CHANCE_FACTOR = 1.5     # near chance: at most this multiple of 1/C ...
CHANCE_MARGIN = 0.05    # ... and at most this far above 1/C
BELOW_BEST_ABS = 0.2    # far below the best: more than this under it ...
BELOW_BEST_REL = 0.5    # ... or under this fraction of it


def near_chance_limit(num_classes: int) -> float:
    """The largest final accuracy that counts as near chance for ``num_classes`` classes."""
    chance = 1.0 / num_classes
    return min(CHANCE_FACTOR * chance, chance + CHANCE_MARGIN)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def accuracy_warning(final, best, num_classes: int | None, best_step: int | None = None) -> str | None:
    """One line (without the ``lbfl: warning:`` prefix) when ``final`` is near chance or far below
    ``best``, else None. ``num_classes`` None or < 2 skips the chance rule."""
    if not _finite(final):
        return None
    chance = (_finite(num_classes) and num_classes >= 2
              and final <= near_chance_limit(int(num_classes)) + 1e-12)
    below = _finite(best) and (final < best - BELOW_BEST_ABS or final < BELOW_BEST_REL * best)
    if not (chance or below):
        return None
    parts = []
    if chance:
        parts.append(f"near chance (1/{int(num_classes)} = {1 / num_classes:.4f})")
    if below:
        at = f" at step {best_step}" if isinstance(best_step, int) and best_step >= 0 else ""
        parts.append(f"far below the best {best:.4f}{at}")
    cause = ("the run diverged after its best evaluation; a smaller train.lr usually fixes it" if below
             else "the model did not learn; check train.lr, the partition and the classes the clients hold")
    return f"final test accuracy {final:.4f} is {' and '.join(parts)}: {cause}"


def config_num_classes(config: dict) -> int | None:
    """The class count a run's config.toml implies (None when it cannot tell)."""
    from .config import NUM_CLASSES

    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if name == "synthetic":
        k = data.get("synthetic_classes", 10)
        return k if isinstance(k, int) and not isinstance(k, bool) else None
    return NUM_CLASSES.get(name) if isinstance(name, str) else None
