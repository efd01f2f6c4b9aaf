"""BSP and FedAvg synchronisation on every rank against one-process references.

Every rank builds the same model and the same global batch (seeded), takes its own slice (sizes differ
between ranks in the "unequal" layouts) and trains a few steps; each rank recomputes the reference on
its own and compares with torch.testing.assert_close. The "unequal-sliced" layout sets
LBFL_ALLREDUCE_CHUNK_MB=0.01 before the Comm is made, so the MPI plane reduces the flat buffers in
~10 KiB slices.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.comm.mpi_plane import chunk_bytes_from_env
from lbfl_mpi.comm.world import Comm
from lbfl_mpi.models import build_model
from lbfl_mpi.sync import BSPSync, FedAvgSync

STEPS, SHAPE, CLASSES, LR = 4, (1, 8, 8), 10, 0.1
LAYOUTS = {"equal": (False, "4"), "unequal": (True, "4"), "unequal-sliced": (True, "0.01")}


@dataclass
class Layout:
    comm: Comm
    sizes: list[int]  # b_c of every rank
    sliced: bool      # the MPI plane reduces in slices smaller than the gradient

    @property
    def offsets(self) -> list[int]:
        return [sum(self.sizes[:r]) for r in range(len(self.sizes))]

    @property
    def mine(self) -> slice:
        o = self.offsets[self.comm.rank]
        return slice(o, o + self.sizes[self.comm.rank])

    @property
    def weights(self) -> torch.Tensor:
        return torch.tensor([float(w) for w in self.sizes], dtype=torch.float64)

    def batch(self, step: int):
        g = torch.Generator().manual_seed(1000 + step)
        n = sum(self.sizes)
        return torch.randn(n, *SHAPE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)

    def model(self, seed_shift: int = 0):
        torch.manual_seed(self.comm.rank + seed_shift)  # different per rank on purpose: broadcast_initial fixes it
        return build_model("cnn", SHAPE, CLASSES)


@pytest.fixture(params=list(LAYOUTS))
def layout(request, new_comm, monkeypatch, deterministic) -> Layout:
    unequal, chunk_mb = LAYOUTS[request.param]
    monkeypatch.setenv("LBFL_ALLREDUCE_CHUNK_MB", chunk_mb)
    comm = new_comm()  # its MPI plane reads the variable (chunk_bytes_from_env) here
    assert comm.plane.chunk_bytes == chunk_bytes_from_env() == int(float(chunk_mb) * 2**20)
    comm.pick_device("cpu")
    return Layout(comm, [3 + 2 * r if unequal else 4 for r in range(comm.world_size)], sliced=chunk_mb == "0.01")


def local_sgd(lay: Layout, model, sync, mode: str):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    b = lay.sizes[lay.comm.rank]
    for s in range(STEPS):
        x, y = lay.batch(s)
        opt.zero_grad()
        F.cross_entropy(model(x[lay.mine]), y[lay.mine]).backward()
        if mode == "bsp":
            sync.sync_grads(s, b)
        opt.step()
        if mode == "fedavg":
            sync.sync_params(s, b)
    return model


def bsp_run(lay: Layout):
    """(the initial model after the broadcast, the model after STEPS BSP steps)."""
    model = lay.model()
    bsp = BSPSync(lay.comm, model)
    bsp.broadcast_initial()
    init = copy.deepcopy(model)
    return init, local_sgd(lay, model, bsp, "bsp")


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_bsp_equals_one_process_sgd_on_the_concatenated_batch(layout):
    init, bsp_model = bsp_run(layout)
    if layout.sliced:  # the gradient really takes many slices
        assert 4 * flat(bsp_model).numel() > 10 * layout.comm.plane.chunk_bytes
    ref = copy.deepcopy(init)
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    for s in range(STEPS):
        x, y = layout.batch(s)
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    for a, b in zip(bsp_model.parameters(), ref.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
    # every rank ends with identical parameters
    mine = flat(bsp_model)
    allp = layout.comm.allgather_array(mine.numpy())
    for r in range(layout.comm.world_size):
        assert_close(torch.from_numpy(allp[r]), mine, rtol=0, atol=0)


def test_fedavg_every_step_equals_bsp(layout):
    """FedAvg with H = 1 == BSP for plain SGD (exact with equal batches; sample-weighted otherwise)."""
    init, bsp_model = bsp_run(layout)
    fed_model = copy.deepcopy(init)
    local_sgd(layout, fed_model, FedAvgSync(layout.comm, fed_model, period=1), "fedavg")
    for a, b in zip(fed_model.parameters(), bsp_model.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sample_weighted_model_average_equals_the_closed_form(layout):
    m = layout.model(seed_shift=100)
    avg = FedAvgSync(layout.comm, m, period=1)
    gathered = torch.from_numpy(layout.comm.allgather_array(flat(m).numpy()))  # [W, n]
    w = layout.weights
    expect = (gathered.double() * w[:, None]).sum(0) / w.sum()
    avg.average_state_(layout.sizes[layout.comm.rank])
    assert_close(flat(m).double(), expect, rtol=1e-5, atol=1e-6)


def test_batchnorm_running_statistics_are_averaged_and_integer_buffers_stay_local(layout):
    r = layout.comm.rank
    torch.manual_seed(r)
    bn_model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    bn = bn_model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(7 + r)
    local = torch.cat([bn.running_mean, bn.running_var])
    gathered = torch.from_numpy(layout.comm.allgather_array(local.numpy())).double()
    FedAvgSync(layout.comm, bn_model, period=1).average_state_(layout.sizes[r])
    w = layout.weights
    expect = (gathered * w[:, None]).sum(0) / w.sum()
    assert_close(torch.cat([bn.running_mean, bn.running_var]).double(), expect, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 7 + r


def _grads(model, xs, ys):
    model.zero_grad()
    F.cross_entropy(model(xs), ys).backward()
    return [q.grad.clone() for q in model.parameters()]


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_bsp_gradient_under_normalisation(layout, norm):
    """GroupNorm normalises each sample alone: the exchanged gradient is the global batch's. BatchNorm
    normalises over each client's own batch: the exchanged gradient is the b_c-weighted average of the
    clients' gradients, each with its own batch statistics, and the running statistics stay per client."""
    comm, sizes = layout.comm, layout.sizes
    x, y = layout.batch(99)
    torch.manual_seed(comm.rank)
    net = build_model("bncnn", SHAPE, CLASSES, norm)
    sync = BSPSync(comm, net)
    sync.broadcast_initial()
    init = copy.deepcopy(net)
    _grads(net, x[layout.mine], y[layout.mine])
    sync.sync_grads(0, sizes[comm.rank])
    got = [q.grad for q in net.parameters()]
    whole = _grads(copy.deepcopy(init), x, y)
    per_client = [_grads(copy.deepcopy(init), x[o:o + b], y[o:o + b]) for o, b in zip(layout.offsets, sizes)]
    total = sum(sizes)
    weighted = [sum(b / total * g[i] for b, g in zip(sizes, per_client)) for i in range(len(whole))]
    for a, b in zip(got, whole if norm == "group" else weighted):
        assert_close(a, b, rtol=1e-4, atol=1e-6)
    if norm == "batch" and comm.world_size > 1:
        assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(got, whole)), \
            "BatchNorm under BSP should differ from the global-batch gradient"
        bn = next(mod for mod in net.modules() if isinstance(mod, torch.nn.BatchNorm2d))
        means = torch.from_numpy(comm.allgather_array(bn.running_mean.detach().numpy()))
        assert not torch.equal(means[0], means[1]), "running statistics are per client"
        ref_net = copy.deepcopy(init)
        ref_net(x[layout.mine])  # this client's batch alone updates its running statistics
        own = next(mod for mod in ref_net.modules() if isinstance(mod, torch.nn.BatchNorm2d))
        assert_close(bn.running_mean, own.running_mean, rtol=1e-5, atol=1e-6)
