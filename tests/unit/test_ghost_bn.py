"""Ghost BatchNorm (models/ghost_bn.py) against a loop of plain BatchNorm calls, one per ghost batch:
outputs, gradients, running statistics and their counter; evaluation is BatchNorm's."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from lbfl_mpi.models import build_model
from lbfl_mpi.models.ghost_bn import GhostBatchNorm, ghost_batch_norm_


def _reference(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, g: int) -> torch.Tensor:
    """Each slice of g samples through F.batch_norm in training mode, updating the buffers in turn."""
    out = [F.batch_norm(xs, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
           for xs in x.split(g)]
    bn.num_batches_tracked.add_(len(out))
    return torch.cat(out)


@pytest.mark.parametrize("make,shape,g", [
    (lambda: nn.BatchNorm2d(3), (12, 3, 5, 5), 4),
    (lambda: nn.BatchNorm2d(3), (10, 3, 4, 4), 4),   # a smaller last slice (4, 4, 2)
    (lambda: nn.BatchNorm1d(6), (9, 6), 3),
], ids=["2d", "2d-remainder", "1d"])
def test_ghost_batches_equal_one_batchnorm_call_per_slice(make, shape, g):
    torch.manual_seed(0)
    ref = make()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
        ref.running_mean.uniform_(-1, 1)
    gbn = GhostBatchNorm(copy.deepcopy(ref), g)
    for step in range(3):  # the running statistics carry over steps
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(step)) * 2 + 1
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = _reference(ref, xa, g), gbn(xb)
        assert_close(yb, ya, rtol=1e-5, atol=1e-5)
        w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(10 + step))
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        for name in ("running_mean", "running_var"):
            assert_close(getattr(gbn, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
        assert int(gbn.num_batches_tracked) == int(ref.num_batches_tracked)
    for pa, pb in zip(ref.parameters(), gbn.parameters(), strict=True):
        assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-5)
    ref.eval(), gbn.eval()
    x = torch.randn(*shape)
    assert_close(gbn(x), ref(x))


def test_ghost_batches_differ_from_whole_batch_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2)
    x = torch.randn(8, 2, 3, 3) + torch.arange(8.0).view(8, 1, 1, 1)  # slices with different means
    assert (GhostBatchNorm(copy.deepcopy(bn), 4)(x) - bn(x)).abs().max() > 0.1


def test_swapping_keeps_the_state_dict_names_and_values():
    torch.manual_seed(0)
    model = build_model("bncnn", (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ghost_batch_norm_(model, 4) == n_bn > 0
    assert all(isinstance(m, GhostBatchNorm) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert ghost_batch_norm_(build_model("cnn", (1, 8, 8), 10), 4) == 0
