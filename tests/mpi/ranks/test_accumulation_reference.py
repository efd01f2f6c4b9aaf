"""Gradient accumulation under BSP on every rank, with the bucketed exchange armed before the last
micro-batch only, against one pass over the whole batch through the one-buffer exchange.

Two copies of a model without BatchNorm train side by side: the reference runs each rank's batch in
one backward pass and reduces it in one buffer; the other runs it as micro-batches of 2
(GradStatsPass accumulation) and arms the bucketed exchange (1 KiB buckets) before the last one, as
train/step.py does. The synchronised gradients and the parameters must match every step, and no
bucket may start before the last micro-batch's forward (the overlap is that backward's alone).

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.exchange import BucketedExchange, DenseExchange
from lbfl_mpi.scaling.stats import GradStatsPass
from lbfl_mpi.sync import BSPSync


def test_accumulated_micro_batches_with_bucketed_overlap_equal_one_pass(new_comm):
    comm = new_comm()
    W, R = comm.world_size, comm.rank
    torch.manual_seed(0)
    ref_model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    acc_model = copy.deepcopy(ref_model)
    ref_params, acc_params = list(ref_model.parameters()), list(acc_model.parameters())
    slots = len(ref_params) + 1
    ref = BSPSync(comm, ref_model, DenseExchange(comm, ref_params, slots))
    bucketed = BucketedExchange(comm, acc_params, slots, bucket_mb=1 / 1024)
    acc = BSPSync(comm, acc_model, bucketed)
    started_at = []  # the micro-batch being run when each bucket's allreduce started
    chunk = [0]
    start = comm.iallreduce_

    def spy(buf, slot):
        started_at.append(chunk[0])
        return start(buf, slot=slot)

    comm.iallreduce_ = spy
    gp = GradStatsPass(acc_params, 0, accumulate=2)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ref_model, acc_model)]
    b = 6 + 2 * R  # unequal batches: 3 micro-batches on rank 0, 4 on rank 1, ...

    def loss_fn(x, y):
        chunk[0] += 1
        return F.cross_entropy(acc_model(x), y)

    for step in range(3):
        g = torch.Generator().manual_seed(100 * step + R)
        x, y = torch.randn(b, 1, 6, 6, generator=g), torch.randint(0, 10, (b,), generator=g)
        opts[0].zero_grad(set_to_none=True)
        ref.begin_step(b)
        F.cross_entropy(ref_model(x), y).backward()
        ref.sync_grads(step, b)
        chunk[0], started_at[:] = 0, []
        gp.backward(x, y, loss_fn, lambda loss: loss, lambda none: opts[1].zero_grad(set_to_none=none),
                    before_last=lambda: acc.begin_step(b))
        assert gp.chunks == b // 2
        if W > 1:
            assert started_at and set(started_at) == {b // 2}, started_at  # during the last backward only
        acc.sync_grads(step, b)
        for a, c in zip(ref_params, acc_params, strict=True):
            assert_close(c.grad, a.grad, rtol=1e-5, atol=1e-6)
        for o in opts:
            o.step()
        for a, c in zip(ref_params, acc_params, strict=True):
            assert_close(c, a, rtol=1e-5, atol=1e-6)
    comm.iallreduce_ = start
