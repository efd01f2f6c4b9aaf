"""``train.eval_bn_recompute``: an evaluation control for BatchNorm under federated averaging, not an
FL method.

FedAvg (Eq. 1b) averages every client's BatchNorm ``running_mean`` and ``running_var`` with the
weights. Under a non-IID partition each client's statistics describe its own label mix, and the
average of per-client variances is not the variance of the pooled data (it misses the spread of the
client means), so the averaged model can be evaluated with statistics that no data has. This
control separates that cause from the weights themselves: before every evaluation the global
model's statistics are recomputed from N training samples pooled over all clients, and put back
afterwards, so training is untouched.

The N samples are the first N of the fixed draw of the training set that ``train.eval_train_samples``
also reads (data/holdout.py: ``probe``), the same on every rank; the global model is the same on every
rank too, so every rank computes the same statistics and no collective is needed. They are passed in
training mode, without gradients, in batches of ``train.eval_batch``, with each BatchNorm's momentum
set to None: PyTorch's cumulative average, which weights every batch equally.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..data import eval_batches
from ..precision import autocast


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def recomputed_statistics(model: nn.Module, data, batch: int, device, to_device, precision: str = "fp32"):
    """Inside: ``model``'s BatchNorm statistics recomputed from ``data`` (see the module docstring);
    on exit, the statistics, momenta and mode it had. ``to_device(x, y)`` moves a batch as training does."""
    layers = batch_norms(model)
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    was_training = model.training
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for x, y in eval_batches(data, 0, 1, batch, device=device):
                x, _ = to_device(x, y)
                with autocast(precision, device):
                    model(x)
        yield
    finally:
        with torch.no_grad():
            for m, (momentum, mean, var, n) in zip(layers, saved):
                m.momentum = momentum
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)
        model.train(was_training)
