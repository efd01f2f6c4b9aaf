"""The bucketed, overlapped gradient exchange on every rank against the one-buffer exchange.

Two copies of the same model train side by side for a few steps, one through BSP with the dense
one-buffer exchange, one with the bucketed exchange whose allreduces start during backward. Batch
sizes differ between ranks, the model has BatchNorm, one layer never gets a gradient on any rank and
one layer gets one only on rank 0, and the per-layer statistics travel in the extras slots. Every step
the synchronised gradients, the summed statistics and the parameters must match
(torch.testing.assert_close), over the MPI plane and over a gloo process group; the ``gpu`` cases run
the same on CUDA (MPI and gloo then stage each bucket through pinned host memory).

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.exchange import BucketedExchange, DenseExchange
from lbfl_mpi.sync import BSPSync

from ._world import CUDA_EVERYWHERE

STEPS = 4
ON_CUDA = pytest.param("auto", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA_EVERYWHERE,
                                                                           reason="needs CUDA on every rank")],
                       id="cuda")


class Net(nn.Module):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.unused = nn.Linear(5, 5)          # never reached: no gradient on any rank
        self.rank0_only = nn.Linear(16, 10)   # reached on rank 0 only
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x))).mean((2, 3))
        out = self.head(x)
        return out + self.rank0_only(x) if self.rank == 0 else out


@pytest.mark.parametrize("device_pref", [pytest.param("cpu", id="cpu"), ON_CUDA])
@pytest.mark.parametrize("backend", ["mpi", "gloo"])
def test_bucketed_overlapped_exchange_equals_one_buffer(new_comm, backend, device_pref):
    comm = new_comm()
    device = comm.pick_device(device_pref)
    W, R = comm.world_size, comm.rank
    assert comm.start_backend(backend) == backend
    if device_pref == "auto":
        assert device.type == "cuda" and comm.staging() == "pinned-host", (device, comm.staging())
    torch.manual_seed(0)
    ref_model = Net(R).to(device)
    ovl_model = copy.deepcopy(ref_model)
    ref_params = [q for q in ref_model.parameters() if q.requires_grad]
    ovl_params = [q for q in ovl_model.parameters() if q.requires_grad]
    slots = len(ref_params) + 1
    ref = BSPSync(comm, ref_model, DenseExchange(comm, ref_params, slots))
    # 1 KiB buckets: several buckets, and hooks that start collectives in the middle of backward
    bucketed = BucketedExchange(comm, ovl_params, slots, bucket_mb=1 / 1024)
    ovl = BSPSync(comm, ovl_model, bucketed)
    assert bucketed.n_buckets >= 3, bucketed.n_buckets
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ref_model, ovl_model)]
    summed = torch.tensor([sum(float(r + i) for r in range(W)) for i in range(slots)], dtype=torch.float64)
    b = 3 + 2 * R  # unequal batches
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 * step + R)
        x, y = torch.randn(b, 1, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)
        x, y = x.to(device), y.to(device)
        out = {}
        for name, model, sync, opt, params in (("ref", ref_model, ref, opts[0], ref_params),
                                                ("ovl", ovl_model, ovl, opts[1], ovl_params)):
            opt.zero_grad(set_to_none=True)
            sync.begin_step(b)
            F.cross_entropy(model(x), y).backward()
            stats = torch.tensor([float(R + i) for i in range(slots)], device=device)
            res = sync.sync_grads(step, b, stats=stats)
            out[name] = ([None if q.grad is None else q.grad.clone() for q in params], res.stats)
            opt.step()
        for gr, go in zip(out["ref"][0], out["ovl"][0]):
            if W > 1:  # every layer gets a gradient from the exchange, zeros where no rank made one
                assert gr is not None and go is not None
            if gr is None:  # one rank exchanges nothing: the gradients stay as backward left them
                assert go is None
            else:
                assert_close(go, gr)
        assert_close(out["ovl"][1], out["ref"][1])
        # one rank: the statistics come back as given; more: summed, on the device they were given on
        assert_close(out["ref"][1], summed.to(device) if W > 1 else summed.to(device=device, dtype=stats.dtype))
        for a, c in zip(ref_model.state_dict().values(), ovl_model.state_dict().values()):
            assert_close(c, a)
    if W == 1:  # no exchange ran, so no layout was observed
        return
    # after the first step the layout follows rank 0's observed autograd order: the layer that never
    # gets a gradient is at the end, the head (whose gradient backward produces first) near the start
    names = [n for n, q in ovl_model.named_parameters() if q.requires_grad]
    order = [names[i] for i in bucketed.order]
    assert order[-2:] == ["unused.weight", "unused.bias"] or order[-2:] == ["unused.bias", "unused.weight"], order
    assert order.index("head.weight") < order.index("conv1.weight"), order
