"""Sharpness: the top eigenvalue of the training loss's Hessian, by power iteration.

The sharp-minima account of the large-batch gap (Keskar et al. 2017) says large batches end in
regions of high curvature; the top Hessian eigenvalue lambda_max is the usual reading (column
``sharpness`` of the ``eval`` group with ``train.eval_sharpness_iters`` > 0). Steps, on a fixed batch
(x, y) of the training probe (``train.eval_train_samples``), the model in evaluation mode (BatchNorm
reads its running statistics, so nothing in the model changes):

1. v_0: a unit vector drawn from a fixed generator (the same on every rank and at every evaluation);
2. for k = 1..K: w = H v_{k-1} by double backward (exact Hessian-vector product), lambda_k = v_{k-1} . w,
   v_k = w / |w|;
3. lambda_K is the estimate (a Rayleigh quotient): it converges to the eigenvalue of largest magnitude
   at the rate |lambda_2 / lambda_1|^K.

Every rank computes it on the same batch from the same (global) model, so the value is identical
everywhere and no collective is needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_V0_SEED = 11  # fixed: every evaluation starts from the same vector


def hvp(loss_fn, params: list[torch.Tensor], v: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v of the scalar ``loss_fn()`` with respect to ``params`` (double backward)."""
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, v))
        return [h.detach() for h in torch.autograd.grad(dot, params)]


def top_eigenvalue(loss_fn, params: list[torch.Tensor], iters: int) -> float:
    """Steps 1-3: lambda_K after ``iters`` power iterations on the Hessian of ``loss_fn()``."""
    gen = torch.Generator().manual_seed(_V0_SEED)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]
    norm = torch.sqrt(sum((u.double() ** 2).sum() for u in v))
    v = [u / norm.to(u.dtype) for u in v]
    lam = float("nan")
    for _ in range(iters):
        w = hvp(loss_fn, params, v)
        lam = float(sum((a.double() * b.double()).sum() for a, b in zip(v, w)))
        norm = torch.sqrt(sum((u.double() ** 2).sum() for u in w))
        if float(norm) == 0.0:
            return 0.0
        v = [u / norm.to(u.dtype) for u in w]
    return lam


def model_sharpness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int) -> float:
    """lambda_max of the mean cross-entropy of ``model`` on (x, y), in evaluation mode."""
    was_training = model.training
    model.eval()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        return top_eigenvalue(lambda: F.cross_entropy(model(x).float(), y), params, iters)
    finally:
        model.train(was_training)
