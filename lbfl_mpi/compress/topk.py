"""Top-k sparsification with error feedback (Tyagi 2025, Eq. 9: G = C(G) + residual).

Selection follows Deep Gradient Compression (Lin et al., ICLR 2018). Eq. 9 only splits G into what
is sent and a residual; carrying the residual into the next step (error feedback: Stich et al.,
NeurIPS 2018; Karimireddy et al., ICML 2019) is an addition to the paper, on by default and off with
``compress.error_feedback = false``. One step of :class:`TopKCompressor`:

1. acc = x + r            (r = 0 without error feedback, and at the start)
2. idx = select(acc)      k = round(density * n) largest |acc|, over the whole vector (scope "global")
                          or per tensor with the same density (scope "layerwise"); "exact" uses
                          torch.topk, "sampled" a threshold estimated from a random sample (DGC)
3. send (acc[idx], idx)
4. r <- acc, r[idx] <- 0  so r = acc - C(acc): the unsent remainder, carried to the next step

Summed over steps, what was sent plus the final residual equals what was fed in (tested).
"""
from __future__ import annotations

import math

import torch

MIN_SAMPLE = 1000  # entries sampled at least, so that small tensors get a usable threshold estimate


def k_for(numel: int, density: float) -> int:
    """Entries kept for a vector of ``numel`` at ``density`` (at least 1)."""
    return max(1, min(numel, int(round(numel * density))))


def topk_exact(x: torch.Tensor, k: int) -> torch.Tensor:
    """int64 indices of the k largest |x| (unordered)."""
    if k >= x.numel():
        return torch.arange(x.numel(), device=x.device)
    return torch.topk(x.abs(), k, sorted=False).indices


def topk_sampled(x: torch.Tensor, k: int, generator: torch.Generator, sample_fraction: float = 0.01,
                 tolerance: float = 0.2) -> torch.Tensor:
    """int64 indices of about k large |x|, DGC style.

    The k-th largest magnitude of a random sample estimates the threshold; everything at or above it
    is kept. A kept count above k(1 + tolerance) is cut to exactly k by an exact top-k over the kept
    entries only; a count below k(1 - tolerance) lowers the threshold (estimated at 2x, 4x, ... the
    density) and finally falls back to the exact selection.
    """
    n = x.numel()
    if k >= n:
        return torch.arange(n, device=x.device)
    mag = x.abs()
    s = min(n, max(MIN_SAMPLE, math.ceil(n * sample_fraction)))
    sample = mag[torch.randint(0, n, (s,), device=x.device, generator=generator)]
    for widen in (1, 2, 4, 8):
        ks = min(s, max(1, math.ceil(s * k / n * widen)))
        thr = torch.topk(sample, ks, sorted=False).values.min()
        idx = torch.nonzero(mag >= thr, as_tuple=False).view(-1)
        if idx.numel() > k * (1 + tolerance):
            return idx[torch.topk(mag[idx], k, sorted=False).indices]
        if idx.numel() >= k * (1 - tolerance):
            return idx
    return topk_exact(x, k)


def select(x: torch.Tensor, density: float, selection: str, scope: str, sizes: list[int],
           generator: torch.Generator | None = None, sample_fraction: float = 0.01,
           tolerance: float = 0.2) -> torch.Tensor:
    """Indices into flat ``x`` chosen by ``selection`` over the whole vector or per tensor (``sizes``)."""

    def pick(seg: torch.Tensor) -> torch.Tensor:
        k = k_for(seg.numel(), density)
        if selection == "exact":
            return topk_exact(seg, k)
        return topk_sampled(seg, k, generator, sample_fraction, tolerance)

    if scope == "global":
        return pick(x)
    out, start = [], 0
    for n in sizes:
        out.append(pick(x[start:start + n]) + start)
        start += n
    return torch.cat(out)


class TopKCompressor:
    """Residual state and step counter for compressing one flat vector of fixed size ``numel``."""

    def __init__(self, cfg, numel: int, device: torch.device, sizes: list[int], seed: int = 0):
        self.density, self.selection, self.scope = cfg.density, cfg.selection, cfg.scope
        self.error_feedback = cfg.error_feedback
        self.sample_fraction, self.tolerance = cfg.sample_fraction, cfg.tolerance
        if numel >= 2**31:
            raise ValueError(f"top-k over {numel} entries: indices travel as int32 (at most 2**31 - 1)")
        self.sizes = sizes
        self.numel = numel
        self.residual = torch.zeros(numel if self.error_feedback else 0, dtype=torch.float32, device=device)
        self._spare = torch.empty_like(self.residual)  # next step's acc: no n-vector allocated per step
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.steps = 0

    def compress(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, int64 indices) of C(x + r); updates the residual. ``x`` is not modified; the
        values are a copy."""
        acc = torch.add(x, self.residual, out=self._spare) if self.error_feedback else x
        idx = select(acc, self.density, self.selection, self.scope, self.sizes, self.generator,
                     self.sample_fraction, self.tolerance)
        values = acc[idx]
        if self.error_feedback:
            acc[idx] = 0
            self._spare, self.residual = self.residual, acc
        self.steps += 1
        return values, idx

    def residual_norm_sq(self) -> float:
        """|r|^2 accumulated in float64 over 1M-entry slices (no n-entry float64 temporary)."""
        if not self.error_feedback:
            return 0.0
        total = torch.zeros((), dtype=torch.float64, device=self.residual.device)
        for chunk in self.residual.split(2**20):
            total += chunk.double().pow(2).sum()
        return float(total.item())

    def state_dict(self) -> dict:
        return {"residual": self.residual, "steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.residual = d["residual"].to(self.residual.device).clone()
        self.steps = int(d["steps"])
        self.generator.set_state(d["generator"])
