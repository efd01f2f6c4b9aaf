"""Phase-aware top-k density (``compress.density_mode = adaptive``): send more in critical phases,
less elsewhere, and optionally less at larger batches.

Accordion (Agarwal, Wang, Lee, Venkataraman & Papailiopoulos, MLSys 2021) switches between a low and
a high compression by the critical regime of training: compression in a critical regime hurts
accuracy, outside it little. Here the regime is the paper's Eq. 8 detector (scaling/critical.py),
which every run already evaluates, and the paper's Eq. 9 remark (a gradient of a larger batch is the
sparse mean G* plus less noise phi(b), so it tolerates more compression) gives the optional batch
term. Per step t:

1. critical  c_t = the Eq. 8 phase of step t - 1 (the gradient of step t is compressed before its own
             change is known; under BSP the phase comes from the synchronised gradient, so every rank
             agrees; under FedAvg each client's from its own gradient)
2. base      d = compress.density_critical if c_t else compress.density      (mode "fixed": d = density)
3. batch     d <- d * min(1, compress.density_batch_ref / B)  with B the global batch of the step,
             when density_batch_ref > 0: at or below the reference batch the density is d, above it
             proportionally sparser (never denser, so the dense-crossover decision made at the start
             from the largest d holds)

The error-feedback residual r is one vector whatever k is: a density change only changes how many
entries of x + r are sent, and r stays acc - C(acc) (tested).
"""
from __future__ import annotations


def step_density(ccfg, critical: bool, global_batch: int) -> float:
    """Steps 2-3 for one step."""
    adaptive = ccfg.density_mode == "adaptive"
    d = ccfg.density_critical if adaptive and critical else ccfg.density
    if ccfg.density_batch_ref > 0 and global_batch > ccfg.density_batch_ref:
        d *= ccfg.density_batch_ref / global_batch
    return float(d)


def max_density(ccfg) -> float:
    """The largest density a run can use (the dense-crossover decision, taken once)."""
    return max(ccfg.density, ccfg.density_critical) if ccfg.density_mode == "adaptive" else ccfg.density
