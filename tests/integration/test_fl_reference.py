"""Each federated algorithm and server optimizer of ``fl.clients > 0`` against a one-process reference
written plainly here: a loop over rounds and sampled clients with torch.optim.SGD, the algorithm's
gradient correction and aggregation written out, and the server update of Reddi et al. 2021. The
batches come from the same loaders (the data stream is not under test)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.config import load_config
from lbfl_mpi.data import ClientLoader, load_dataset, partition_indices
from lbfl_mpi.fl.sampling import sample_clients
from lbfl_mpi.models import build_model
from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args
from ..unit.test_fl_algorithms import _reference_server

N, K, H, STEPS = 6, 3, 3, 12


def _setup(overrides: list[str], n_clients: int):
    """The config, the partition over the clients, a loader per client and the initial model, as a
    run with these overrides makes them."""
    cfg = load_config(None, overrides)
    seed = cfg.run.seed
    bundle = load_dataset(cfg.data, seed)
    parts = partition_indices(bundle.train_labels, n_clients, cfg.data.partition, seed, cfg.data.labels_per_client,
                              cfg.data.alpha)
    loaders = [ClientLoader(bundle.train, parts[i], cfg.train.batch_size, seed, i, device="cpu")
               for i in range(n_clients)]
    torch.manual_seed(seed)
    return cfg, parts, loaders, build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.norm)


def reference_run(overrides: list[str]) -> dict:
    cfg, parts, loaders, model = _setup(overrides, N)
    fl, tc, seed = cfg.fl, cfg.train, cfg.run.seed
    params = list(model.parameters())
    buffers = [b for b in model.buffers() if b.is_floating_point()]  # BatchNorm running statistics
    n_p = sum(p.numel() for p in params)
    bn = [isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()]
    bn_ids = {id(t) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
              for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    local = torch.cat([torch.full((t.numel(),), id(t) in bn_ids) for t in params + buffers]) \
        if fl.bn == "local" and any(bn) else None

    def get():
        return torch.cat([t.detach().reshape(-1) for t in params + buffers]).clone()

    def load(vec):
        i = 0
        with torch.no_grad():
            for t in params + buffers:
                t.copy_(vec[i:i + t.numel()].view_as(t))
                i += t.numel()

    x0 = get()
    x = x0.clone()
    opts = {}  # client -> its SGD optimizer, kept between rounds (fl.client_state = keep)
    c = torch.zeros(n_p)
    c_i = {i: torch.zeros(n_p) for i in range(N)}
    own_bn = {}  # FedBN: each client's BatchNorm entries
    residual = {}  # top-k error feedback: each client's unsent remainder (Eq. 9)
    deltas_seen = []
    h = cfg.sync.period
    for r in range(tc.steps // h):
        sampled = sample_clients(N, K, r, seed, [len(p) for p in parts], fl.sampling == "weighted")
        d_controls = torch.zeros(n_p)
        contributions = []
        for i in sampled:
            start = x.clone()
            if local is not None and i in own_bn:
                start[local] = own_bn[i]
            load(start)
            if i not in opts or fl.algorithm in ("fednova", "scaffold"):
                opts[i] = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
            opt = opts[i]
            samples = 0
            # fl.local_epochs = E: ceil(E n_i / B) local steps, else sync.period
            tau = math.ceil(fl.local_epochs * len(parts[i]) / tc.batch_size) if fl.local_epochs else h
            for _ in range(tau):
                xb, yb = loaders[i].next_batch()
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                w = torch.cat([p.detach().reshape(-1) for p in params])
                g = torch.cat([p.grad.reshape(-1) for p in params])
                if fl.algorithm == "fedprox":
                    g = g + fl.prox_mu * (w - x[:n_p])
                if fl.algorithm == "scaffold":
                    g = g + c - c_i[i]
                torch.nn.utils.vector_to_parameters(g, [p.grad for p in params])
                opt.step()
                samples += len(yb)
            y = get()
            if local is not None:
                own_bn[i] = y[local]
            rho = tc.momentum
            a = tau if rho == 0 else sum((1 - rho ** k) / (1 - rho) for k in range(1, tau + 1))
            if fl.algorithm == "scaffold":  # option II with the momentum's |a|_1 in place of K
                new = c_i[i] - c + (x[:n_p] - y[:n_p]) / (a * tc.lr)
                d_controls += new - c_i[i]
                c_i[i] = new
            d = y - x
            if cfg.compress.method == "topk":
                acc = d + residual.get(i, torch.zeros_like(d))
                k = max(1, round(cfg.compress.density * acc.numel()))
                idx = torch.topk(acc.abs(), k).indices
                d = torch.zeros_like(acc)
                d[idx] = acc[idx]
                residual[i] = acc - d
            contributions.append((d, samples, a))
        n = sum(s for _, s, _ in contributions)
        if fl.algorithm == "fednova":
            tau_eff = sum(s / n * a for _, s, a in contributions)
            delta = tau_eff * sum(s / n * d / a for d, s, a in contributions)
        else:
            delta = sum(s / n * d for d, s, _ in contributions)
        deltas_seen.append(delta[:n_p])
        c = c + d_controls / N
        # the server's state is a function of the deltas so far: replay them from the initial model;
        # BatchNorm statistics take the plain mean delta
        x = torch.cat([_reference_server(fl.server_optimizer, x0[:n_p], deltas_seen, fl.server_lr,
                                         fl.server_momentum, *fl.server_betas, fl.server_tau),
                       x[n_p:] + delta[n_p:]])
    load(x)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CASES = {
    "fedavg-sampled": ["fl.algorithm='fedavg'"],
    "fedavg-weighted-dirichlet": ["fl.sampling='weighted'", "data.partition='dirichlet'"],
    "fedprox": ["fl.algorithm='fedprox'", "fl.prox_mu=0.5"],
    "scaffold": ["fl.algorithm='scaffold'"],
    "scaffold-momentum": ["fl.algorithm='scaffold'", "train.momentum=0.9"],
    "fednova": ["fl.algorithm='fednova'"],
    "server-sgd-lr": ["fl.server_lr=0.5"],
    "server-momentum": ["fl.server_optimizer='momentum'", "fl.server_lr=0.5"],
    "server-adam": ["fl.server_optimizer='adam'", "fl.server_lr=0.01"],
    "server-yogi": ["fl.server_optimizer='yogi'", "fl.server_lr=0.01"],
    "server-adagrad": ["fl.server_optimizer='adagrad'", "fl.server_lr=0.01"],
    "bn-average": ["model.name='bncnn'"],
    "topk-error-feedback": ["compress.method='topk'", "compress.density=0.05"],
    "topk-scaffold": ["compress.method='topk'", "compress.density=0.2", "fl.algorithm='scaffold'"],
    "fedbn-local": ["model.name='bncnn'", "fl.bn='local'"],
    "fedbn-adam": ["model.name='bncnn'", "fl.bn='local'", "fl.server_optimizer='adam'", "fl.server_lr=0.01"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_federated_run_equals_its_plain_one_process_reference(tmp_path, name):
    sets = ["sync.mode='fedavg'", f"sync.period={H}", f"train.steps={STEPS}", "train.batch_size=8",
            f"fl.clients={N}", f"fl.clients_per_round={K}", *CASES[name]]
    run_lbfl(tiny_run_args(tmp_path / "run", *sets), n=1)
    got = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)
    want = reference_run(sets)
    assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["fedavg", "fednova"])
def test_local_epochs_give_each_client_its_own_step_count(tmp_path, algorithm):
    """fl.local_epochs = 0.25 on a Dirichlet split: tau_i = ceil(E n_i / B) differs between clients, and
    FedNova's normalised average differs from FedAvg's (checked apart, so that the case is not moot)."""
    base = ["sync.mode='fedavg'", "train.batch_size=8", "data.partition='dirichlet'", f"fl.clients={N}",
            f"fl.clients_per_round={K}", "fl.local_epochs=0.25", "train.momentum=0.5"]
    _, parts, _, _ = _setup(base, N)
    taus = [math.ceil(0.25 * len(p) / 8) for p in parts]
    assert len(set(taus)) > 2, taus
    h = max(taus)
    sets = [*base, f"sync.period={h}", f"train.steps={3 * h}", f"train.eval_every={h}",
            f"fl.algorithm='{algorithm}'"]
    run_lbfl(tiny_run_args(tmp_path / "run", *sets), n=1)
    got = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)
    assert_close(got, reference_run(sets), rtol=1e-5, atol=1e-6)
    with open_rank_file(tmp_path / "run" / "rank0000.h5") as f:
        rows = read_group(f, "clients")
    assert [int(t) for t in rows["local_steps"]] == [taus[c] for c in rows["client"]]
    other = "fedavg" if algorithm == "fednova" else "fednova"
    with pytest.raises(AssertionError):
        assert_close(got, reference_run([*sets, f"fl.algorithm='{other}'"]), rtol=1e-5, atol=1e-6)


def test_fednova_with_equal_local_steps_is_fedavg_with_the_momentum_reset(tmp_path):
    """With equal tau_i, |a_i|_1 is the same for every client and FedNova's average is FedAvg's
    (Wang et al. 2020, Sec. 4); FedNova also restarts the client momentum each round, so it must equal
    FedAvg with fl.client_state='reset' (the control of the NIID table), and differ from 'keep'."""
    base = ["sync.mode='fedavg'", f"sync.period={H}", f"train.steps={STEPS}", "train.batch_size=8",
            f"fl.clients={N}", f"fl.clients_per_round={K}", "train.momentum=0.9", "data.partition='dirichlet'"]
    models = {}
    for name, extra in (("nova", "fl.algorithm='fednova'"), ("reset", "fl.client_state='reset'"),
                        ("keep", "fl.client_state='keep'")):
        run_lbfl(tiny_run_args(tmp_path / name, *base, extra), n=1)
        models[name] = torch.load(tmp_path / name / "model.pt", map_location="cpu", weights_only=True)
    assert_close(models["nova"], models["reset"], rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError):
        assert_close(models["keep"], models["reset"], rtol=1e-5, atol=1e-6)


def test_local_epochs_longer_than_the_round_span_are_refused_naming_the_client(tmp_path):
    sets = ["sync.mode='fedavg'", "sync.period=2", "train.steps=4", f"fl.clients={N}", "fl.local_epochs=1"]
    r = run_lbfl(tiny_run_args(tmp_path / "run", *sets), n=1, check=False)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "fl.local_epochs=1" in ln]
    assert len(lines) == 1 and "set sync.period to at least" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def bsp_reference(sets: list[str], n_clients: int, steps: int) -> dict:
    """BSP over N clients, plainly: every step, one SGD step on the mean loss of the concatenation of
    every client's batch (the global batch of N x train.batch_size samples)."""
    cfg, _, loaders, model = _setup(sets, n_clients)
    tc = cfg.train
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    for _ in range(steps):
        xs, ys = zip(*(ld.next_batch() for ld in loaders))
        opt.zero_grad()
        F.cross_entropy(model(torch.cat(xs)), torch.cat(ys)).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_bsp_over_more_clients_than_ranks_is_the_global_batch_step(tmp_path):
    sets = ["sync.mode='bsp'", "fl.clients=8", "model.norm='group'", "train.steps=6", "train.batch_size=8",
            "train.momentum=0.9"]
    want = bsp_reference(sets, 8, 6)
    for n in (1, 3):  # 3 ranks: 3, 3 and 2 clients, unequal batches weighted by the exchange
        run_lbfl(tiny_run_args(tmp_path / f"n{n}", *sets), n=n)
        got = torch.load(tmp_path / f"n{n}" / "model.pt", map_location="cpu", weights_only=True)
        assert_close(got, want, rtol=1e-5, atol=1e-6)
