"""Compressed (top-k) synchronisation on every rank against one-process references built from
gathered dense copies.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.compress.topk import TopKCompressor
from lbfl_mpi.config import load_config
from lbfl_mpi.exchange import TopKExchange, sparse_average
from lbfl_mpi.models import build_model
from lbfl_mpi.sync import BSPSync, FedAvgSync


def ccfg(density, selection="exact"):
    return load_config(None, ["compress.method=topk", f"compress.density={density}",
                              f"compress.selection={selection}"]).compress


def gather(comm, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(comm.allgather_array(t.detach().cpu().numpy()))


def flat_params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def payload_bytes(comm, k: int) -> int:
    """Bytes one rank sends for k entries: the [k, weight] header and k (value, index) pairs; nothing
    on a single rank."""
    return 16 + 8 * k if comm.world_size > 1 else 0


def test_sparse_average_with_a_different_k_on_every_rank(comm):
    """== the weighted average of the ranks' densified compressed vectors."""
    W, R = comm.world_size, comm.rank
    n = 50_000
    x = torch.randn(n, generator=torch.Generator().manual_seed(100 + R))
    comp = TopKCompressor(ccfg(0.002 * (R + 1), "sampled" if R % 2 else "exact"), n, torch.device("cpu"), [n], R)
    values, idx = comp.compress(x)
    dense, nbytes = sparse_average(comm, values, idx, float(3 + R), n)
    assert nbytes == payload_bytes(comm, idx.numel())
    mine = torch.zeros(n)
    mine.index_add_(0, idx, values)
    allv = gather(comm, mine)
    weights = torch.tensor([3.0 + r for r in range(W)])
    expect = (allv * weights[:, None]).sum(0) / weights.sum()
    assert_close(dense, expect, rtol=1e-6, atol=1e-7)
    ks = [int(k) for k in comm.allgather_obj(idx.numel())]
    assert len(set(ks)) == W, ks  # k really differs between ranks


def test_compressed_bsp_at_density_one_is_dense_bsp_bit_for_bit(comm):
    R = comm.rank
    torch.manual_seed(0)
    base = build_model("cnn", (1, 8, 8), 10)
    dense_m, comp_m = copy.deepcopy(base), copy.deepcopy(base)
    dsync = BSPSync(comm, dense_m)
    csync = BSPSync(comm, comp_m, TopKExchange(comm, [p for p in comp_m.parameters()], ccfg(1.0), seed=0))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (dense_m, comp_m)]
    for step in range(4):
        g = torch.Generator().manual_seed(step * 10 + R)
        xb, yb = torch.randn(4 + R, 1, 8, 8, generator=g), torch.randint(0, 10, (4 + R,), generator=g)
        for m, s, o in ((dense_m, dsync, opts[0]), (comp_m, csync, opts[1])):
            o.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            s.sync_grads(step, 4 + R)
            o.step()
    for a, b in zip(dense_m.parameters(), comp_m.parameters()):
        assert_close(a, b, rtol=0, atol=0)


def test_compressed_fedavg_is_the_anchor_plus_the_average_compressed_delta(comm):
    """Through the sparse path (density x ranks <= 1): every rank ends with the same parameters."""
    W, R = comm.world_size, comm.rank
    torch.manual_seed(R)  # different on purpose; broadcast_initial fixes it
    m = build_model("mlp", (1, 8, 8), 10)
    fed = FedAvgSync(comm, m, period=2, exchange=TopKExchange(comm, list(m.parameters()), ccfg(0.05), seed=0))
    assert not fed.exchange.dense_crossover
    fed.broadcast_initial()
    anchor = flat_params(m).clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for step in range(2):
        g = torch.Generator().manual_seed(1000 + step * 10 + R)
        xb, yb = torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 10, (5,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(xb), yb).backward()
        opt.step()
        if step == 1:  # reference: what rank R will send, computed before the sync
            delta = flat_params(m) - anchor
            ref_comp = TopKCompressor(ccfg(0.05), delta.numel(), torch.device("cpu"), [delta.numel()])
            v, i = ref_comp.compress(delta)
            sent = torch.zeros_like(delta).index_add_(0, i, v)
        res = fed.sync_params(step, 5)
    assert res.synced and res.bytes_sent == payload_bytes(comm, round(0.05 * delta.numel()))
    expect = anchor + gather(comm, sent).mean(0)
    assert_close(flat_params(m), expect, rtol=1e-5, atol=1e-6)
    allp = gather(comm, flat_params(m))
    for r in range(W):
        assert_close(allp[r], allp[0], rtol=0, atol=0)
