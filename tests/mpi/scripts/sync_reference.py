"""Under mpiexec -n N: check BSP/FedAvg synchronisation against single-process references.

Every rank builds the same model and the same global batch (seeded), takes its own slice (sizes
differ between ranks when --unequal), and trains k steps. Rank 0 recomputes the reference on one
process and every rank compares with torch.testing.assert_close. Any mismatch raises -> non-zero exit.
"""
import argparse
import copy

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.comm.world import Comm, abort_on_error
from lbfl_mpi.models import build_model
from lbfl_mpi.sync import BSPSync, FedAvgSync

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--unequal", action="store_true")
p.add_argument("--model", default="cnn")
args = p.parse_args()

comm = Comm()
comm.pick_device("cpu")
torch.use_deterministic_algorithms(True)
W, R = comm.world_size, comm.rank
sizes = [3 + 2 * r if args.unequal else 4 for r in range(W)]  # b_c
offsets = [sum(sizes[:r]) for r in range(W)]
B = sum(sizes)
shape, classes, lr = (1, 8, 8), 10, 0.1


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(B, *shape, generator=g), torch.randint(0, classes, (B,), generator=g)


def make_model(seed_shift=0):
    torch.manual_seed(R + seed_shift)  # different per rank on purpose: broadcast_initial must fix it
    return build_model(args.model, shape, classes)


def local_sgd(model, sync, steps, mode):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for s in range(steps):
        x, y = batch(s)
        x, y = x[offsets[R]:offsets[R] + sizes[R]], y[offsets[R]:offsets[R] + sizes[R]]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if mode == "bsp":
            sync.sync_grads(s, sizes[R])
        opt.step()
        if mode == "fedavg":
            sync.sync_params(s, sizes[R])
    return model


with abort_on_error(comm):
    bsp_model = make_model()
    bsp = BSPSync(comm, bsp_model)
    bsp.broadcast_initial()
    init = copy.deepcopy(bsp_model)
    fed_model = copy.deepcopy(init)
    local_sgd(bsp_model, bsp, args.steps, "bsp")

    # 1. BSP == one process running SGD on the concatenated batch
    ref = copy.deepcopy(init)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for s in range(args.steps):
        x, y = batch(s)
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    for a, b in zip(bsp_model.parameters(), ref.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-6)

    # 2. FedAvg with H = 1 == BSP for plain SGD (exact with equal batches; weighted otherwise)
    fed = FedAvgSync(comm, fed_model, period=1)
    local_sgd(fed_model, fed, args.steps, "fedavg")
    for a, b in zip(fed_model.parameters(), bsp_model.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-6)

    # 3. Sample-weighted model average with unequal weights == closed form over gathered models
    m = make_model(seed_shift=100)
    avg = FedAvgSync(comm, m, period=1)
    flat_local = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    gathered = torch.from_numpy(comm.allgather_array(flat_local.numpy()))  # [W, n]
    weights = torch.tensor([float(w) for w in sizes], dtype=torch.float64)
    expect = (gathered.double() * weights[:, None]).sum(0) / weights.sum()
    avg.average_state_(sizes[R])
    got = torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double()
    assert_close(got, expect, rtol=1e-5, atol=1e-6)

    # 3b. BatchNorm running statistics are averaged with the same weights; integer buffers stay local
    torch.manual_seed(R)
    bn_model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    bn = bn_model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(7 + R)
    local = torch.cat([bn.running_mean, bn.running_var])
    gathered = torch.from_numpy(comm.allgather_array(local.numpy())).double()
    FedAvgSync(comm, bn_model, period=1).average_state_(sizes[R])
    expect = (gathered * weights[:, None]).sum(0) / weights.sum()
    assert_close(torch.cat([bn.running_mean, bn.running_var]).double(), expect, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 7 + R

    # 5. normalisation under BSP (model.norm). GroupNorm normalises each sample alone: the exchanged
    #    gradient is the global batch's. BatchNorm normalises over each client's own batch: the exchanged
    #    gradient is the b_c-weighted average of the clients' gradients, each computed with its own batch
    #    statistics (not the global batch's), and the running statistics stay per client.
    def grads(model, xs, ys):
        model.zero_grad()
        F.cross_entropy(model(xs), ys).backward()
        return [q.grad.clone() for q in model.parameters()]

    x, y = batch(99)
    mine = slice(offsets[R], offsets[R] + sizes[R])
    for norm in ("group", "batch"):
        torch.manual_seed(R)
        net = build_model("bncnn", shape, classes, norm)
        sync = BSPSync(comm, net)
        sync.broadcast_initial()
        init = copy.deepcopy(net)
        grads(net, x[mine], y[mine])
        sync.sync_grads(0, sizes[R])
        got = [q.grad for q in net.parameters()]
        whole = grads(copy.deepcopy(init), x, y)
        per_client = [grads(copy.deepcopy(init), x[o:o + b], y[o:o + b]) for o, b in zip(offsets, sizes)]
        weighted = [sum(b / B * g[i] for b, g in zip(sizes, per_client)) for i in range(len(whole))]
        for a, b in zip(got, whole if norm == "group" else weighted):
            assert_close(a, b, rtol=1e-4, atol=1e-6)
        if norm == "batch" and W > 1:
            assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(got, whole)), \
                "BatchNorm under BSP should differ from the global-batch gradient"
            bn = next(mod for mod in net.modules() if isinstance(mod, torch.nn.BatchNorm2d))
            means = torch.from_numpy(comm.allgather_array(bn.running_mean.detach().numpy()))
            assert not torch.equal(means[0], means[1]), "running statistics are per client"
            ref_net = copy.deepcopy(init)
            ref_net(x[mine])  # this client's batch alone updates its running statistics
            own = next(mod for mod in ref_net.modules() if isinstance(mod, torch.nn.BatchNorm2d))
            assert_close(bn.running_mean, own.running_mean, rtol=1e-5, atol=1e-6)

    # 4. every rank ends with identical parameters
    flat = torch.cat([p.detach().reshape(-1) for p in bsp_model.parameters()])
    allp = comm.allgather_array(flat.numpy())
    for r in range(W):
        assert_close(torch.from_numpy(allp[r]), flat, rtol=0, atol=0)
    if R == 0:
        print(f"sync reference OK: world_size={W} sizes={sizes} steps={args.steps}")
