"""LARS, LAMB, AdamW and Nesterov SGD (lbfl_mpi/optim/) against the papers' update rules written out
plainly here, one step and several, with gradients set by hand so that every number is known."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.config.schema import TrainConfig
from lbfl_mpi.optim import LAMB, LARS, build_optimizer, eager_step, param_groups


def _params():
    """A weight matrix, a bias and a norm scale (the last two are <= 1-d: excluded by default)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g, requires_grad=True), torch.randn(4, generator=g, requires_grad=True),
            torch.ones(3, requires_grad=True)]


def _grads(steps: int, shapes):
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]


def _run(opt, params, grads, lrs=None):
    for t, gs in enumerate(grads):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


# ------------------------------------------------------------------------------------------- references
def _lars_ref(w, grads, lrs, m, beta, eta, nesterov, trust):
    """You et al. 2017, Algorithm 1, in float64 on one tensor."""
    w, v = w.double().clone(), None
    for g, lr in zip(grads, lrs, strict=True):
        g = g.double()
        wn, gn = w.norm().item(), g.norm().item()
        local = eta * wn / (gn + beta * wn) if trust and wn > 0 and gn > 0 else 1.0
        d = lr * local * (g + beta * w)
        v = d if v is None else m * v + d
        w = w - (d + m * v if nesterov else v) if m else w - d
    return w


def _lamb_ref(x, grads, lrs, b1, b2, eps, wd, trust):
    """You et al. 2020, Algorithm 2 (bias-corrected, phi the identity), in float64 on one tensor."""
    x = x.double().clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        u = r + wd * x
        phi = x.norm().item() / u.norm().item() if trust and x.norm() > 0 and u.norm() > 0 else 1.0
        x = x - lr * phi * u
    return x


def _adamw_ref(x, grads, lr, b1, b2, eps, wd):
    x = x.double().clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        x = x * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return x


# ------------------------------------------------------------------------------------------------ LARS
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("m,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_lars_matches_algorithm_1(steps, m, nesterov):
    params = _params()
    start = [p.detach().clone() for p in params]
    grads = _grads(steps, [p.shape for p in params])
    lrs = [0.5 * (t + 1) for t in range(steps)]  # a changing schedule: the lr enters inside the velocity
    tc = TrainConfig(optimizer="lars", lr=1.0, momentum=m, nesterov=nesterov, weight_decay=5e-3,
                     trust_coefficient=0.02)
    got = _run(build_optimizer(tc, params), params, grads, lrs)
    for i, (w0, w) in enumerate(zip(start, got, strict=True)):
        excluded = w0.ndim <= 1  # no trust ratio and no weight decay on biases and norm scales
        ref = _lars_ref(w0, [g[i] for g in grads], lrs, m, 0.0 if excluded else 5e-3, 0.02, nesterov,
                        trust=not excluded)
        assert_close(w.double(), ref, rtol=1e-5, atol=1e-6)


def test_lars_without_exclusion_adapts_every_tensor():
    params = _params()
    start = [p.detach().clone() for p in params]
    grads = _grads(3, [p.shape for p in params])
    tc = TrainConfig(optimizer="lars", lr=0.1, momentum=0.9, weight_decay=1e-2, exclude_bias_norm=False)
    got = _run(build_optimizer(tc, params), params, grads)
    for i, (w0, w) in enumerate(zip(start, got, strict=True)):
        ref = _lars_ref(w0, [g[i] for g in grads], [0.1] * 3, 0.9, 1e-2, 1e-3, False, trust=True)
        assert_close(w.double(), ref, rtol=1e-5, atol=1e-7)


def test_lars_ratio_is_one_for_a_zero_layer_and_a_zero_gradient():
    w = torch.zeros(3, 3, requires_grad=True)
    opt = LARS([w], lr=0.1, momentum=0.0, trust_coefficient=1e-3)
    w.grad = torch.ones(3, 3)
    opt.step()
    assert_close(w.detach(), torch.full((3, 3), -0.1))  # ||w|| = 0: the global lr, not 0
    x = torch.ones(2, 2, requires_grad=True)
    opt = LARS([x], lr=0.1, momentum=0.0, weight_decay=0.5)
    x.grad = torch.zeros(2, 2)
    opt.step()
    assert_close(x.detach(), torch.full((2, 2), 1 - 0.1 * 0.5))  # ||g|| = 0: ratio 1, decay at the global lr


# ------------------------------------------------------------------------------------------------ LAMB
@pytest.mark.parametrize("steps", [1, 6])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_lamb_matches_algorithm_2_with_bias_correction(steps, wd):
    params = _params()
    start = [p.detach().clone() for p in params]
    grads = _grads(steps, [p.shape for p in params])
    lrs = [0.01 * (t + 1) for t in range(steps)]
    tc = TrainConfig(optimizer="lamb", lr=1.0, weight_decay=wd, betas=[0.8, 0.95])
    got = _run(build_optimizer(tc, params), params, grads, lrs)
    for i, (x0, x) in enumerate(zip(start, got, strict=True)):
        excluded = x0.ndim <= 1
        ref = _lamb_ref(x0, [g[i] for g in grads], lrs, 0.8, 0.95, 1e-6, 0.0 if excluded else wd,
                        trust=not excluded)
        assert_close(x.double(), ref, rtol=1e-5, atol=1e-6)


def test_lamb_first_step_moves_each_layer_by_lr_times_its_norm():
    """Closed form at t = 1 without decay: r = g / (|g| + eps) elementwise, so the step is
    lr * ||x|| / ||r|| * r and its norm is lr * ||x||, whatever the gradient's scale."""
    x = torch.randn(5, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
    x0 = x.detach().clone()
    opt = LAMB([x], lr=0.01)
    x.grad = 1e3 * torch.randn(5, 5, generator=torch.Generator().manual_seed(4))
    opt.step()
    assert_close((x.detach() - x0).norm(), 0.01 * x0.norm(), rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------- AdamW, SGD, Adam
def test_adamw_decays_weights_only_and_adam_keeps_its_old_defaults():
    params = _params()
    start = [p.detach().clone() for p in params]
    grads = _grads(4, [p.shape for p in params])
    got = _run(build_optimizer(TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1), params), params, grads)
    for i, (x0, x) in enumerate(zip(start, got, strict=True)):
        ref = _adamw_ref(x0, [g[i] for g in grads], 0.01, 0.9, 0.999, 1e-8, 0.0 if x0.ndim <= 1 else 0.1)
        assert_close(x.double(), ref, rtol=1e-5, atol=1e-7)
    # Adam from the builder is torch's Adam with its defaults, bit for bit
    a, b = _params(), _params()
    ref_opt = torch.optim.Adam(a, lr=0.01, weight_decay=1e-3)
    mine = build_optimizer(TrainConfig(optimizer="adam", lr=0.01, weight_decay=1e-3), b)
    grads = _grads(3, [p.shape for p in a])
    for x, y in zip(_run(ref_opt, a, grads), _run(mine, b, grads), strict=True):
        assert_close(y, x, rtol=0, atol=0)


def test_nesterov_sgd_is_torchs_nesterov():
    a, b = _params(), _params()
    grads = _grads(4, [p.shape for p in a])
    ref = _run(torch.optim.SGD(a, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), a, grads)
    got = _run(build_optimizer(TrainConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), b), b, grads)
    for x, y in zip(ref, got, strict=True):
        assert_close(y, x, rtol=1e-6, atol=1e-7)
    # and Nesterov differs from heavy ball on the same gradients
    c = _params()
    heavy = _run(build_optimizer(TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-3), c), c, grads)
    assert (heavy[0] - got[0]).abs().max() > 1e-3


def test_param_groups_split_by_dimension():
    params = _params()
    big, small = param_groups(params, 0.1, True)
    assert [p.shape for p in big["params"]] == [(4, 3)] and big["weight_decay"] == 0.1 and big["trust"]
    assert [p.shape for p in small["params"]] == [(4,), (3,)] and small["weight_decay"] == 0 and not small["trust"]
    (one,) = param_groups(params, 0.1, False)
    assert len(one["params"]) == 3 and one["weight_decay"] == 0.1


# --------------------------------------------------------------------------- state, eager step, config
@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_state_dict_round_trip_continues_the_same_trajectory(name):
    tc = TrainConfig(optimizer=name, lr=0.05, momentum=0.9, weight_decay=1e-2)
    a = _params()
    grads = _grads(6, [p.shape for p in a])
    full = _run(build_optimizer(tc, a), a, grads)
    b = _params()
    opt = build_optimizer(tc, b)
    _run(opt, b, grads[:3])
    saved = {"model": [p.detach().clone() for p in b], "opt": opt.state_dict()}
    c = [p.detach().clone().requires_grad_(True) for p in saved["model"]]
    opt2 = build_optimizer(tc, c)
    opt2.load_state_dict(saved["opt"])
    for x, y in zip(full, _run(opt2, c, grads[3:]), strict=True):
        assert_close(y, x, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_eager_step_is_the_same_update(name):
    tc = TrainConfig(optimizer=name, lr=0.05, momentum=0.9, weight_decay=1e-2)
    a, b = _params(), _params()
    grads = _grads(3, [p.shape for p in a])
    ref = _run(build_optimizer(tc, a), a, grads)
    opt = build_optimizer(tc, b)
    for gs in grads:
        for p, g in zip(b, gs, strict=True):
            p.grad = g.clone()
        eager_step(opt)
    for x, y in zip(ref, b, strict=True):
        assert_close(y.detach(), x, rtol=0, atol=0)


@pytest.mark.parametrize("sets,named", [
    (["train.optimizer='adam'", "train.nesterov=true", "train.momentum=0.9"], "train.nesterov"),
    (["train.nesterov=true"], "train.nesterov"),                         # momentum 0
    (["train.betas=[0.9, 0.99, 0.9]"], "train.betas"),
    (["train.betas=[0.9, 1.0]"], "train.betas"),
    (["train.trust_coefficient=0"], "train.trust_coefficient"),
    (["train.optimizer='lion'"], "train.optimizer"),
    (["fl.clients=4", "sync.mode='fedavg'", "sync.period=2", "train.steps=4", "fl.algorithm='fednova'",
      "train.momentum=0.9", "train.nesterov=true"], "train.nesterov"),
    (["fl.clients=4", "sync.mode='fedavg'", "sync.period=2", "train.steps=4", "fl.algorithm='scaffold'",
      "train.optimizer='lars'"], "train.optimizer"),
])
def test_bad_optimizer_settings_name_the_key(sets, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, sets)


def test_lamb_eps_default_is_the_papers():
    x = torch.zeros(2, requires_grad=True)
    opt = build_optimizer(TrainConfig(optimizer="lamb"), [x])
    assert opt.param_groups[0]["eps"] == 1e-6
    assert math.isclose(build_optimizer(TrainConfig(optimizer="lamb", eps=1e-4), [x]).param_groups[0]["eps"], 1e-4)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_a_constant_gradient_scale_cancels_and_the_transform_warning_says_so(name):
    """Without weight decay, LARS's step is lr * eta * ||w|| * g / ||g|| and LAMB's first step is
    lr * ||x|| * r / ||r||: scaling g by 8 (U(X) of Eq. 6) gives the same update, hence the warning."""
    from lbfl_mpi.scaling.transform import scaling_warnings

    tc = TrainConfig(optimizer=name, lr=0.1, momentum=0.0)
    a, b = [_params()[0]], [_params()[0]]
    (g,) = _grads(1, [a[0].shape])[0]
    ref = _run(build_optimizer(tc, a), a, [[g]])
    got = _run(build_optimizer(tc, b), b, [[8.0 * g]])
    assert_close(got[0], ref[0], rtol=1e-5, atol=1e-7)
    lines = scaling_warnings(load_config(None, ["scaling.method='step'", f"train.optimizer='{name}'"]))
    assert len(lines) == 1 and "trust ratio" in lines[0] and "\n" not in lines[0]
    assert scaling_warnings(load_config(None, ["scaling.method='step'"])) == []
