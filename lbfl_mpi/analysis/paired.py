"""Paired comparisons over seeds: the mean difference and its 95 % Student t interval.

Two arms run with the same seeds share the data order and the initial model seed by seed, so the
per-seed differences d_s = a_s - b_s are the observations: mean d_bar, sample standard deviation s_d,
and the interval d_bar +- t_{0.975, n-1} s_d / sqrt(n). "Held" means the interval lies above 0.
"""
from __future__ import annotations

import math
import statistics

# two-sided 95 % quantiles t_{0.975, df} of Student's t, df = 1 .. 30 (standard tables)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """t_{0.975, df}; beyond the table, the normal's 1.960 plus the first-order 2.4/df correction
    (within 0.003 of the exact quantile for df > 30)."""
    if df < 1:
        raise ValueError(f"df={df}: need at least 1 degree of freedom")
    return _T975[df - 1] if df <= len(_T975) else 1.960 + 2.4 / df


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean of a - b, low, high) of the 95 % t interval over paired seeds; an infinite interval for
    one pair."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    if not d:
        raise ValueError("no pairs")
    m = statistics.mean(d)
    if len(d) < 2:
        return m, -math.inf, math.inf
    h = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - h, m + h


def verdict(lo: float, hi: float) -> str:
    """Held when the interval lies above 0; otherwise not held, saying whether the reverse holds."""
    if lo > 0:
        return "**held**"
    return "**not held** (the reverse holds: the interval lies below 0)" if hi < 0 else \
        "**not held** (the interval includes 0: not shown at this number of seeds)"


def mean_std(xs: list[float]) -> str:
    """'mean +- sample std' with 4 decimals ('mean' alone for one value, '-' for none)."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} +- {statistics.stdev(xs):.4f}"
