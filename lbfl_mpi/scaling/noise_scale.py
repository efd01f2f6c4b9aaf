"""Gradient noise scale and the per-layer gain of a small-batch gradient (McCandlish et al. 2018,
"An Empirical Model of Large-Batch Training", App. A).

For a gradient estimated from a batch of B samples, E|G_B|^2 = |G|^2 + tr(Sigma) / B, with G the
true gradient and Sigma the per-sample covariance. Two estimates at batch sizes b < B give unbiased
estimates of both terms (App. A, Eq. A.2):

    |G|^2    ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

and the simple noise scale B_simple = tr(Sigma) / |G|^2 (Eq. 2.8). Both terms are smoothed with a
bias-corrected exponential moving average before the ratio is taken, as the paper recommends.

Where the two estimates come from:

- BSP with several ranks, for free: the small one is each rank's local gradient (batch b_i; the mean
  over ranks of |g_i|^2 with b = the harmonic mean of the b_i, because E|g_i|^2 = |G|^2 + tr/b_i),
  the large one the synchronised gradient (batch sum b_i);
- one rank or FedAvg: micro-batches of ``scaling.small_batch`` samples of the local batch (small)
  and their mean (large).

Everything is kept per layer (parameter tensor), so that the gain of Eq. 7 can be applied per layer:

    r_l = sqrt(E|g_small,l|^2 / E|G_large,l|^2) = sqrt((|G_l|^2 + tr_l / b_s) / (|G_l|^2 + tr_l / B))

the factor by which a gradient of a small batch b_s is longer than the large-batch one,
1 <= r_l <= sqrt(B / b_s) (pure noise). ``scaling.method = "gain"`` is this project's method, not the
paper's: it replaces the hand-tuned X of Eq. 7 by this factor.
"""
from __future__ import annotations

import collections
import functools
import math

import torch

EPS = 1e-30


def two_batch_estimates(small_sq: torch.Tensor, big_sq: torch.Tensor, b_small: float, b_big: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer unbiased (|G|^2, tr(Sigma)) from E|G_b|^2 and |G_B|^2 (McCandlish App. A)."""
    if not b_big > b_small > 0:
        raise ValueError(f"need b_big > b_small > 0, got b_small={b_small}, b_big={b_big}")
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    tr = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, tr


class NoiseScale:
    """Bias-corrected EMAs of per-layer |G|^2 and tr(Sigma); ``b_simple`` and ``gain``."""

    def __init__(self, n_layers: int, beta: float = 0.9):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.g2 = torch.zeros(n_layers, dtype=torch.float64)
        self.tr = torch.zeros(n_layers, dtype=torch.float64)
        self.t = 0

    def update(self, small_sq, big_sq, b_small: float, b_big: float) -> None:
        """Add one step's per-layer squared norms: ``small_sq`` = E|G_b|^2, ``big_sq`` = |G_B|^2."""
        small_sq = torch.as_tensor(small_sq, dtype=torch.float64).cpu()
        big_sq = torch.as_tensor(big_sq, dtype=torch.float64).cpu()
        g2, tr = two_batch_estimates(small_sq, big_sq, float(b_small), float(b_big))
        self.g2.mul_(self.beta).add_(g2, alpha=1.0 - self.beta)
        self.tr.mul_(self.beta).add_(tr, alpha=1.0 - self.beta)
        self.t += 1

    def _corrected(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = 1.0 - self.beta ** self.t
        return self.g2 / c, self.tr / c

    @property
    def ready(self) -> bool:
        return self.t > 0

    def b_simple(self) -> float:
        """tr(Sigma) / |G|^2 over all layers; NaN before the first update or when |G|^2 <= 0."""
        if not self.ready:
            return math.nan
        g2, tr = self._corrected()
        total = float(g2.sum())
        return float(tr.sum()) / total if total > 0 else math.nan

    def gain(self, b_small: float, b_large: float) -> torch.Tensor:
        """Per-layer r_l for a target small batch ``b_small`` and the batch ``b_large`` of the gradient
        being scaled; 1 everywhere before the first update. Negative noisy estimates are clipped
        (|G|^2 to a tiny positive value, tr to 0), which keeps 1 <= r_l <= sqrt(b_large / b_small)."""
        if not self.ready:
            return torch.ones_like(self.g2)
        g2, tr = self._corrected()
        g2 = g2.clamp_min(EPS)
        tr = tr.clamp_min(0.0)
        return torch.sqrt((g2 + tr / b_small) / (g2 + tr / b_large))

    def state_dict(self) -> dict:
        return {"g2": self.g2.clone(), "tr": self.tr.clone(), "t": self.t}

    def load_state_dict(self, d: dict) -> None:
        self.g2, self.tr, self.t = d["g2"].clone(), d["tr"].clone(), int(d["t"])


# Elements per partial sum in layer_sq_norms. A float32 norm kernel accumulates with an error that
# grows with the length (on CPU about 2e-5 relative at 1e6 elements, 7e-4 at 1e7); float32 norms of
# 65536-element slices summed in float64 stay near 1e-6 at any size, at nearly the speed of the plain
# float32 norm (ResNet-18 on 2 CPU threads: 6-10x faster than squaring a float64 copy of every
# gradient; benchmarks/bench_norms.py).
NORM_CHUNK = 1 << 16
# ... but only inside float32's range: the squares of elements below ~1e-19 lose digits (a slice of
# 1e-25 values sums to 0) and above ~1e19 they overflow. A slice whose float32 norm falls outside
# this interval (a vanishing or diverging layer, or exact zeros) is summed again in float64.
SAFE_NORM = (1e-15, 1e18)

_foreach_norm = getattr(getattr(torch, "foreach", None), "norm", None) or torch._foreach_norm


def _flat(t: torch.Tensor) -> torch.Tensor:
    """All elements of ``t`` as one 1-D tensor; a view whenever its memory is dense in some dimension
    order (e.g. channels_last), since a norm does not depend on the order of the elements."""
    if not t.is_contiguous():
        p = t.permute(sorted(range(t.dim()), key=t.stride, reverse=True))
        if p.is_contiguous():
            t = p
    return t.reshape(-1)


@functools.lru_cache(maxsize=16)
def _slots(owner: tuple, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Cell of each slice in an [n, width] table (row = its tensor) whose row sums are the per-tensor
    sums: each cell written once, so the result is deterministic, unlike atomic adds on a GPU. The
    parameter list is the same every step, so this is computed once."""
    width = max(collections.Counter(owner).values())
    cols: dict = {}
    pos = []
    for o in owner:
        c = cols.get(o, 0)
        cols[o] = c + 1
        pos.append(o * width + c)
    return torch.tensor(pos, dtype=torch.int64).to(device), width


def layer_sq_norms(tensors) -> torch.Tensor:
    """Per-tensor squared L2 norms as float64, on the tensors' device (a missing tensor counts 0).

    Each tensor is cut into slices of :data:`NORM_CHUNK` elements (views, no copy); one multi-tensor
    norm call gives every slice's norm in float32 (float64 for float64 tensors), and the squares are
    summed per tensor in float64. Relative error about 1e-6 against the float64 sum of squares; slices
    outside :data:`SAFE_NORM` are redone in float64. Finding those reads the slice norms on the host
    (on a GPU, a wait for the gradients, which every caller does next anyway to read the total).
    """
    tensors = list(tensors)
    groups: dict = {}  # accumulation dtype -> (slices, index of each slice's tensor)
    for i, t in enumerate(tensors):
        if t is None:
            continue
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        slices, owner = groups.setdefault(acc, ([], []))
        t = t.detach()
        if t.numel() <= NORM_CHUNK:  # most tensors of a network (biases, norms): one slice as is
            slices.append(t)
            owner.append(i)
        else:
            parts = _flat(t).split(NORM_CHUNK)
            slices.extend(parts)
            owner.extend([i] * len(parts))
    if not groups:
        return torch.zeros(len(tensors), dtype=torch.float64)
    sqs, owners = [], []
    for acc, (slices, owner) in groups.items():
        norms = torch.stack(_foreach_norm(slices, dtype=acc))
        sq = norms.to(torch.float64).square()
        if acc == torch.float32:
            lo, hi = SAFE_NORM
            for j in ((norms < lo) | (norms > hi)).nonzero().flatten().tolist():  # NaN stays NaN
                sq[j] = slices[j].to(torch.float64).square().sum()
        sqs.append(sq)
        owners.extend(owner)
    sq = torch.cat(sqs) if len(sqs) > 1 else sqs[0]
    pos, width = _slots(tuple(owners), len(tensors), sq.device)
    table = sq.new_zeros(len(tensors) * width)
    table[pos] = sq
    return table.view(len(tensors), width).sum(1)
