"""The federated layer's pure parts against references written here: sampling and placement, the
server optimizers of Reddi et al. 2021, FedNova's |a|_1, SCAFFOLD's option II control, the round
sums, and the client store's spill round trip."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.fl.algorithms import RoundSums, nova_norm, prox_correct_, scaffold_control, scaffold_correct_
from lbfl_mpi.fl.sampling import place_balanced, place_throughput, sample_clients
from lbfl_mpi.fl.server import ServerOptimizer
from lbfl_mpi.fl.store import ClientStore


def test_a_round_sample_is_a_function_of_seed_and_round_only():
    a = [sample_clients(100, 10, r, seed=3) for r in range(50)]
    assert a == [sample_clients(100, 10, r, seed=3) for r in range(50)]
    assert all(len(s) == 10 == len(set(s)) and s == sorted(s) for s in a)
    assert a != [sample_clients(100, 10, r, seed=4) for r in range(50)]
    assert sample_clients(7, 0, 5, 0) == sample_clients(7, 7, 5, 0) == list(range(7))


def test_uniform_sampling_gives_every_client_its_share_and_weighted_follows_the_sizes():
    counts = np.zeros(20)
    for r in range(4000):
        counts[sample_clients(20, 5, r, seed=0)] += 1
    assert_close(counts / 4000, np.full(20, 5 / 20), atol=0.03, rtol=0)
    sizes = [1] * 10 + [100] * 10
    heavy = sum(sum(c >= 10 for c in sample_clients(20, 2, r, 0, sizes, weighted=True)) for r in range(2000))
    assert heavy / 4000 > 0.95  # a client 100x larger is drawn far more often


def _makespan(groups, sizes):
    return max(sum(sizes[c] for c in g) for g in groups)


def test_balanced_placement_is_lpt_and_within_four_thirds_of_the_best():
    rng = np.random.default_rng(0)
    for _ in range(30):
        sizes = rng.integers(1, 100, size=7).tolist()
        groups = place_balanced(list(range(7)), sizes, 3)
        assert sorted(itertools.chain(*groups)) == list(range(7))
        best = min(_makespan([[c for c in range(7) if a[c] == r] for r in range(3)], sizes)
                   for a in itertools.product(range(3), repeat=7))
        assert _makespan(groups, sizes) <= 4 / 3 * best + 1e-9
    assert place_balanced([0, 1, 2, 3], [5, 5, 5, 5], 4) == [[0], [1], [2], [3]]


def test_throughput_placement_gives_a_slow_rank_less_and_is_balanced_at_equal_speeds():
    rng = np.random.default_rng(1)
    for _ in range(20):
        sizes = rng.integers(1, 100, size=8).tolist()
        assert place_throughput(list(range(8)), sizes, [0.5, 0.5, 0.5]) == place_balanced(list(range(8)), sizes, 3)
        groups = place_throughput(list(range(8)), sizes, [1.0, 4.0])
        finish = [sum(sizes[c] for c in g) * s for g, s in zip(groups, [1.0, 4.0])]
        best = min(max(sum(sizes[c] for c in range(8) if a[c] == 0) * 1.0,
                       sum(sizes[c] for c in range(8) if a[c] == 1) * 4.0)
                   for a in itertools.product(range(2), repeat=8))
        assert max(finish) <= 2 * best  # LPT on related machines (Gonzalez et al. 1977: < 2)
        assert sum(sizes[c] for c in groups[1]) <= sum(sizes[c] for c in groups[0])


def _reference_server(name, x, deltas, lr, beta=0.9, b1=0.9, b2=0.99, tau=1e-3):
    """Reddi et al. 2021, Algorithm 2 (and FedAvgM), written out plainly, one element at a time."""
    x = x.clone()
    m = torch.zeros_like(x)
    v = torch.full_like(x, tau ** 2) if name in ("adam", "yogi", "adagrad") else torch.zeros_like(x)
    for d in deltas:
        if name == "sgd":
            x = x + lr * d
            continue
        if name == "momentum":
            v = beta * v + d
            x = x + lr * v
            continue
        m = b1 * m + (1 - b1) * d
        if name == "adagrad":
            v = v + d ** 2
        elif name == "adam":
            v = b2 * v + (1 - b2) * d ** 2
        else:
            v = v - (1 - b2) * d ** 2 * torch.sign(v - d ** 2)
        x = x + lr * m / (torch.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "yogi", "adagrad"])
def test_server_optimizers_match_reddi_et_al_over_several_rounds(name):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(50, generator=g, dtype=torch.float64)
    deltas = [torch.randn(50, generator=g, dtype=torch.float64) * 0.1 for _ in range(6)]
    opt = ServerOptimizer(name, lr=0.3)
    x = x0.clone()
    for d in deltas:
        opt.step_(x, d)
    assert_close(x, _reference_server(name, x0, deltas, 0.3))


def test_nova_norm_is_the_sum_of_the_momentum_coefficients():
    assert nova_norm(7, 0.0) == 7.0
    rho, tau = 0.9, 5
    # the final model after tau momentum steps from a zero buffer: y = x - lr sum_k c_k g_k, with
    # c_k = sum_{j=0..tau-k} rho^j; their sum is |a|_1
    coeffs = [sum(rho ** j for j in range(tau - k + 1)) for k in range(1, tau + 1)]
    assert nova_norm(tau, rho) == pytest.approx(sum(coeffs))


def test_nova_norm_matches_torch_sgd_momentum_on_a_constant_gradient():
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.8)
    for _ in range(6):
        opt.zero_grad()
        w.grad = torch.ones(1)
        opt.step()
    assert float(-w.detach()) / 0.1 == pytest.approx(nova_norm(6, 0.8))


def test_scaffold_control_option_two_and_corrections():
    g = torch.Generator().manual_seed(2)
    c_i, c, x, y = (torch.randn(10, generator=g) for _ in range(4))
    assert_close(scaffold_control(c_i, c, x, y, 0.5), c_i - c + (x - y) / 0.5)
    p = torch.nn.Parameter(torch.randn(10, generator=g))
    p.grad = torch.randn(10, generator=g)
    grad0 = p.grad.clone()
    scaffold_correct_([p], [c], [c_i])
    assert_close(p.grad, grad0 + c - c_i)
    p.grad = grad0.clone()
    prox_correct_([p], [x], 0.01)
    assert_close(p.grad, grad0 + 0.01 * (p.detach() - x))


def test_round_sums_give_fedavg_and_fednova_means():
    g = torch.Generator().manual_seed(3)
    deltas = [torch.randn(6, generator=g) for _ in range(3)]
    n, a = [10, 30, 60], [4.0, 8.0, 2.0]
    avg = RoundSums("fedavg", 6, 4, "cpu")
    nova = RoundSums("fednova", 6, 4, "cpu")
    for d, ni, ai in zip(deltas, n, a):
        avg.add(d, ni, ai)
        nova.add(d, ni, ai)
    p = torch.tensor(n, dtype=torch.float32) / sum(n)
    assert_close(avg.mean_delta(), sum(pi * d for pi, d in zip(p, deltas)))
    tau_eff = sum(pi * ai for pi, ai in zip(p, a))
    assert_close(nova.mean_delta(), tau_eff * sum(pi * d / ai for pi, d, ai in zip(p, deltas, a)))
    equal = RoundSums("fednova", 6, 4, "cpu")
    for d, ni in zip(deltas, n):
        equal.add(d, ni, 5.0)
    assert_close(equal.mean_delta(), avg.mean_delta())  # equal local steps: FedNova is FedAvg


def test_the_client_store_spills_beyond_its_budget_and_reads_back_bit_for_bit(tmp_path):
    store = ClientStore(budget_mb=0.01, spill_dir=tmp_path / "clients" / "rank0000")
    g = torch.Generator().manual_seed(4)
    states = {cid: {"control": torch.randn(1000, generator=g), "loader": {"pass": cid, "offset": 3},
                    "optimizer": {"state": {0: {"momentum_buffer": torch.randn(5, generator=g)}},
                                  "param_groups": [{"lr": 0.1, "params": [0]}]}} for cid in range(5)}
    for cid, s in states.items():
        store.put(cid, s)
    assert store.spills > 0 and store.bytes <= store.budget
    assert len(list((tmp_path / "clients" / "rank0000").glob("client_*.pt"))) == len(store.spilled)
    for cid in range(5):
        got = store.pop(cid)
        torch.testing.assert_close(got, states[cid], rtol=0, atol=0)
    assert store.ids() == [] and not list((tmp_path / "clients" / "rank0000").glob("client_*.pt"))
    assert store.pop(9) is None
