"""Ghost BatchNorm (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better", Sec. 4,
Algorithm 1): in training, a batch of B samples is normalised in slices of G ("ghost batches"), each
with its own mean and variance, in the one forward pass; evaluation uses the running statistics.

For input x of shape [B, C, ...] with B = k G:

    1. slices      x -> [k, G, C, ...]; per slice s and channel c the mean mu_s and the biased
                   variance var_s over G and the spatial positions (n = G x H x W values)
    2. normalise   y = gamma (x - mu_s) / sqrt(var_s + eps) + beta
    3. running     the k slices update the running statistics one after another, as k BatchNorm calls
                   would: r <- (1 - m)^k r + sum_s m (1 - m)^(k-1-s) stat_s, with the unbiased
                   variance var_s n / (n - 1) (torch's convention), and num_batches_tracked += k

A batch not a multiple of G ends with one smaller slice. ``model.ghost_batch`` = G swaps every
BatchNorm layer of a model for this one (:func:`ghost_batch_norm_`); the parameter and buffer names
stay those of BatchNorm, so checkpoints, FedBN and the model average see the same state.
"""
from __future__ import annotations

import torch
from torch import nn


def _slice_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """x [k, G, C, *spatial] -> per-slice mean and biased variance [k, C], and n per slice."""
    k, g, c = x.shape[:3]
    dims = [1, *range(3, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var, x[0].numel() // c


class GhostBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer (1-d or 2-d input) that normalises training batches in ghost batches of
    ``ghost`` samples (module docstring, steps 1-3)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, ghost: int):
        like = next(iter([*bn.parameters(), *bn.buffers()]), None)
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=None if like is None else like.device)
        self.load_state_dict(bn.state_dict())
        self.ghost = int(ghost)

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"GhostBatchNorm: expected 2-5-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if not self.training or b <= self.ghost:
            return super().forward(x)
        if self.momentum is None:
            raise ValueError("GhostBatchNorm: momentum=None (cumulative averages) is not supported")
        full = b // self.ghost * self.ghost
        parts = [self._ghost(x[:full])]
        if full < b:  # one smaller last slice
            parts.append(self._ghost(x[full:]))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _ghost(self, x: torch.Tensor) -> torch.Tensor:
        g = min(self.ghost, x.shape[0])
        k = x.shape[0] // g
        xs = x.reshape(k, g, *x.shape[1:])                               # 1.
        mean, var, n = _slice_stats(xs)
        shape = (k, 1, -1) + (1,) * (x.dim() - 2)
        y = (xs - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)   # 2.
        if self.affine:
            wshape = (1, 1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(wshape) + self.bias.view(wshape)
        if self.track_running_stats:                                      # 3.
            with torch.no_grad():
                m = self.momentum
                coef = m * (1 - m) ** torch.arange(k - 1, -1, -1, dtype=mean.dtype, device=mean.device)
                unbiased = var * (n / max(n - 1, 1))
                self.running_mean.mul_((1 - m) ** k).add_((coef[:, None] * mean.detach()).sum(0))
                self.running_var.mul_((1 - m) ** k).add_((coef[:, None] * unbiased.detach()).sum(0))
                self.num_batches_tracked.add_(k)
        return y.reshape(x.shape)


def ghost_batch_norm_(model: nn.Module, ghost: int) -> int:
    """Replace every BatchNorm layer of ``model`` by a :class:`GhostBatchNorm` of ``ghost`` samples, in
    place; returns how many were replaced (0: the model has no BatchNorm)."""
    swapped = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GhostBatchNorm):
            gbn = GhostBatchNorm(child, ghost)
            gbn.train(child.training)
            setattr(model, name, gbn)
            swapped += 1
        else:
            swapped += ghost_batch_norm_(child, ghost)
    return swapped
