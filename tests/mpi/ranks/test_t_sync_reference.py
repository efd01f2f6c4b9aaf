"""t_sync of ``lbfl plan`` (plan/sync_time.py) measured by every rank together.

For each synchronisation scheme (BSP with one buffer, BSP bucketed, FedAvg, post-local SGD) on the
MPI plane and on gloo: t_sync must be positive and bit-identical on every rank (the largest of the
per-rank medians, one per rank), the payload must equal the closed form of the exchanged vector (fp32:
BSP, trainable parameters + one statistics slot per trainable tensor + 1/b slot + weight slot; FedAvg,
parameters + float buffers + weight slot), and the caller's model must be unchanged. On one rank
nothing is exchanged: t_sync is 0 and the payload empty.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lbfl_mpi.config import load_config
from lbfl_mpi.plan.sync_time import measure_t_sync


@pytest.mark.parametrize("backend", ["mpi", "gloo"])
def test_t_sync_is_positive_and_identical_on_every_rank(comm, backend):
    W = comm.world_size
    assert comm.start_backend(backend) == backend
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    before = [t.detach().clone() for t in model.state_dict().values()]
    params = sum(q.numel() for q in model.parameters())
    n_tensors = sum(1 for _ in model.parameters())
    float_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    cases = {
        "bsp": (["sync.mode=bsp"], params + n_tensors + 1 + 1, "dense"),
        "bsp-bucketed": (["sync.mode=bsp", "sync.bucket_mb=0.001"], params + n_tensors + 1 + 1, "bucketed"),
        "fedavg": (["sync.mode=fedavg", "sync.period=4"], params + float_buffers + 1, "dense"),
        "postlocal": (["sync.mode=postlocal", "sync.period=3", "sync.switch_step=5"], params + float_buffers + 1,
                      "dense"),
    }
    for name, (sets, numel, exchange) in cases.items():
        cfg = load_config(None, sets + [f"dist.backend={backend}"])
        t = measure_t_sync(cfg, comm, model, comm.device, warmup=1, repeats=3)
        every = comm.allgather_obj((t.t_sync, t.per_rank))
        assert all(e == every[0] for e in every), (name, every)  # the same floats on every rank
        if W == 1:
            assert (t.t_sync, t.per_rank, t.numel, t.nbytes, t.exchange, t.backend) == \
                (0.0, [0.0], params, 0, "none", backend), (name, t)
        else:
            assert t.t_sync > 0, (name, t)
            assert t.t_sync == max(t.per_rank) and len(t.per_rank) == W, (name, t)
            assert (t.numel, t.nbytes, t.exchange, t.backend) == (numel, 4 * numel, exchange, backend), (name, t)
        for a, b in zip(before, model.state_dict().values()):
            assert torch.equal(a, b), name
        assert all(q.grad is None for q in model.parameters()), name
