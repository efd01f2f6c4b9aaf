"""scaling.method = gnp (scaling/gnp.py): the finite-difference gradient of the penalty against
autograd's double backward of (eps/4) mean_j |grad L_j|^2, BatchNorm buffers left alone, and a whole
training step against plain SGD on the penalised loss."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.scaling.gnp import GradNormPenalty, penalty_grad_
from lbfl_mpi.scaling.stats import GradStatsPass
from lbfl_mpi.train import build_worker, train


def _mlp(dtype=torch.float64, bn=False):
    torch.manual_seed(0)
    layers = [torch.nn.Flatten(), torch.nn.Linear(6, 5)]
    layers += [torch.nn.BatchNorm1d(5)] if bn else []
    layers += [torch.nn.Tanh(), torch.nn.Linear(5, 3)]
    return torch.nn.Sequential(*layers).to(dtype)


def _data(n=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def _reference(model, chunks, eps):
    """grad of mean_j L_j + (eps/4) mean_j |grad L_j|^2 by double backward."""
    params = list(model.parameters())
    total = 0.0
    for xs, ys in chunks:
        lj = F.cross_entropy(model(xs), ys)
        gj = torch.autograd.grad(lj, params, create_graph=True)
        total = total + (lj + eps / 4 * sum((g * g).sum() for g in gj)) / len(chunks)
    return [g.detach() for g in torch.autograd.grad(total, params)]


def _loss(model):
    return lambda xs, ys: F.cross_entropy(model(xs), ys)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_finite_difference_matches_double_backward(m):
    model = _mlp()
    x, y = _data()
    chunks = list(zip(x.split(8 // m), y.split(8 // m)))
    want = _reference(model, chunks, eps=0.3)
    passer = GradStatsPass(list(model.parameters()), micro_batch=8 // m if m > 1 else 0)
    passer.penalty = GradNormPenalty(model, epsilon=0.3, radius=1e-6)
    passer.backward(x, y, _loss(model), lambda v: v, lambda none: model.zero_grad(set_to_none=none))
    got = [p.grad for p in model.parameters()]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # without the penalty the same pass gives the plain gradient, which differs from the reference
    plain = _reference(model, chunks, eps=0.0)
    assert max(float((a - b).abs().max()) for a, b in zip(plain, want)) > 1e-4


def test_epsilon_zero_reads_the_learning_rate():
    model = _mlp()
    x, y = _data()
    lr = {"v": 0.7}
    pen = GradNormPenalty(model, epsilon=0.0, radius=1e-6, lr_of=lambda: lr["v"])
    assert pen.eps() == 0.7
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    rows = torch.cat([p.grad.reshape(-1) for p in model.parameters()])[None].clone()
    pen.add_(list(model.parameters()), [(x, y)], _loss(model), rows)
    torch.testing.assert_close([p.grad for p in model.parameters()], _reference(model, [(x, y)], 0.7),
                               rtol=1e-5, atol=1e-7)


def test_batchnorm_buffers_and_parameters_are_restored():
    model = _mlp(bn=True)
    x, y = _data()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # the training pass: updates the running statistics once
    after_one = {k: v.clone() for k, v in model.state_dict().items()}
    rows = torch.cat([p.grad.reshape(-1) for p in model.parameters()])[None].clone()
    penalty_grad_(model, list(model.parameters()), [(x, y)], _loss(model), rows, eps=0.1, radius=0.01)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, after_one[k], rtol=0, atol=0, msg=k)


def test_one_training_step_is_sgd_on_the_penalised_loss(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.out_dir={run}", "train.steps=1", "train.eval_every=0", "train.batch_size=8",
                             "model.name=mlp", "scaling.method=gnp", "scaling.small_batch=4", "train.lr=0.5",
                             "scaling.gnp_radius=1e-3"])
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    w = build_worker(cfg, Comm(), batches=lambda step, client: (x, y))
    model = w.client.model
    start = {k: v.detach().clone().double() for k, v in model.state_dict().items()}
    ref = copy.deepcopy(model).double()  # the reference: float64, from the same initial weights
    ref.load_state_dict(start)
    chunks = list(zip(x.double().split(4), y.split(4)))
    grads, plain = _reference(ref, chunks, eps=0.5), _reference(ref, chunks, eps=0.0)  # eps = the step's lr
    train(w)
    got = torch.load(run / "model.pt", weights_only=True)
    for (n, p), gr, g0 in zip(ref.named_parameters(), grads, plain):
        # float32 finite differences at r = 1e-3: |error| ~ 3e-5 in the gradient, the penalty moves it ~3e-2
        torch.testing.assert_close(got[n].double(), p.detach() - 0.5 * gr, rtol=0, atol=5e-5, msg=n)
        assert float((got[n].double() - (p.detach() - 0.5 * g0)).abs().max()) > 100 * 5e-5


@pytest.mark.parametrize("setting,key", [
    ("train.precision=fp16", "train.precision"),
    ("sync.bucket_mb=1", "sync.bucket_mb"),
    ("train.micro_batch=4", "train.micro_batch"),
])
def test_unsupported_combinations_are_refused(setting, key):
    with pytest.raises(ConfigError, match=f"{key}.*scaling.method='gnp'"):
        load_config(None, ["scaling.method=gnp", "train.batch_size=8", setting])
