"""Gradient accumulation (train.micro_batch; scaling/stats.py GradStatsPass, plan/micro_batch.py) against
one pass over the whole batch, the per-micro-batch statistics against separate backward passes, and
the auto micro-batch against Eq. 3's memory model inverted by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.plan.memory import fit_memory
from lbfl_mpi.plan.micro_batch import largest_divisor_at_most, micro_batch_of
from lbfl_mpi.precision import LossScaler
from lbfl_mpi.scaling.noise_scale import layer_sq_norms
from lbfl_mpi.scaling.stats import GradStatsPass


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _batch(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 6, 6, generator=g), torch.randint(0, 5, (b,), generator=g)


def _pass(model, accumulate, x, y, scaler=None, small_stats=False, before_last=None):
    params = list(model.parameters())
    gp = GradStatsPass(params, 0, accumulate, small_stats)
    scaled = scaler.scale_loss if scaler is not None else (lambda loss: loss)
    loss, micro = gp.backward(x, y, lambda a, b: F.cross_entropy(model(a), b), scaled,
                              lambda none: [setattr(p, "grad", None) if none else p.grad.zero_()
                                            for p in params if p.grad is not None], before_last)
    assert micro is None
    return loss, [p.grad.clone() for p in params], gp


@pytest.mark.parametrize("b,m", [(16, 4), (12, 3), (10, 4)], ids=["4x4", "4x3", "unequal-4-4-2"])
def test_accumulated_gradient_is_the_batch_gradient(b, m):
    x, y = _batch(b)
    ref_loss, ref, _ = _pass(_net(), 0, x, y)
    loss, got, gp = _pass(_net(), m, x, y)
    assert gp.chunks == -(-b // m)
    assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
    for a, c in zip(ref, got, strict=True):
        assert_close(c, a, rtol=1e-5, atol=1e-7)


def test_accumulation_under_fp16_loss_scaling_unscales_to_the_batch_gradient():
    """The loss scaler multiplies every micro-batch's loss; unscaling the sum gives the one-pass gradient."""
    x, y = _batch(16)
    _, ref, _ = _pass(_net(), 0, x, y)
    model, scaler = _net(), LossScaler()
    _, _, _ = _pass(model, 4, x, y, scaler=scaler)
    grads = [p.grad for p in model.parameters()]
    assert scaler.scale > 1 and (grads[0] - ref[0]).abs().max() > 1  # really scaled before unscaling
    assert scaler.unscale_(grads)
    for a, c in zip(ref, grads, strict=True):
        assert_close(c, a, rtol=1e-5, atol=1e-7)


def test_micro_batch_statistics_are_the_mean_squared_norm_of_each_micro_gradient():
    """Reference: m separate backward passes, one per micro-batch, and their per-layer |g_j|^2."""
    x, y = _batch(12)
    ref_model = _net()
    per = []
    for xs, ys in zip(x.split(3), y.split(3)):
        ref_model.zero_grad(set_to_none=True)
        F.cross_entropy(ref_model(xs), ys).backward()
        per.append(layer_sq_norms([p.grad for p in ref_model.parameters()]).double())
    _, _, gp = _pass(_net(), 3, x, y, small_stats=True)
    assert_close(gp.small_sq, torch.stack(per).mean(0), rtol=1e-5, atol=1e-9)
    stats = gp.measure(0, 12, None)
    assert stats.small_batch == 3 and stats.small_sq is gp.small_sq
    # a second step reuses the scratch buffer and starts from the new step's first micro-batch
    x2, y2 = _batch(12, seed=5)
    per2 = []
    for xs, ys in zip(x2.split(3), y2.split(3)):
        ref_model.zero_grad(set_to_none=True)
        F.cross_entropy(ref_model(xs), ys).backward()
        per2.append(layer_sq_norms([p.grad for p in ref_model.parameters()]).double())
    model = _net()
    params = list(model.parameters())
    gp.params = params
    gp.backward(x2, y2, lambda a, b: F.cross_entropy(model(a), b), lambda loss: loss,
                lambda none: [setattr(p, "grad", None) for p in params])
    assert_close(gp.small_sq, torch.stack(per2).mean(0), rtol=1e-5, atol=1e-9)


def test_before_last_runs_once_before_the_last_micro_batch_backward():
    """The overlap hook point: the gradients seen when it runs are those of the first m - 1
    micro-batches only (DDP's no_sync, then the synchronising backward)."""
    x, y = _batch(12)
    model = _net()
    first = model[0].weight
    seen = []
    _pass(model, 4, x, y, before_last=lambda: seen.append(first.grad.clone()))
    assert len(seen) == 1
    ref = _net()
    for xs, ys in zip(x[:8].split(4), y[:8].split(4)):
        (F.cross_entropy(ref(xs), ys) * 4 / 12).backward()
    assert_close(seen[0], ref[0].weight.grad, rtol=1e-5, atol=1e-7)
    calls = []
    _pass(_net(), 0, x, y, before_last=lambda: calls.append(1))  # one pass: before it
    assert calls == [1]


# --------------------------------------------------------------------------------------- auto (-1)
class _Bundle:
    input_shape, num_classes = (1, 8, 8), 10


def _cfg(*sets):
    return load_config(None, ["model.name='cnn'", "train.batch_size=64", *sets])


def test_auto_micro_batch_is_the_largest_divisor_that_eq3_fits():
    from lbfl_mpi.models import build_model

    model = build_model("cnn", (1, 8, 8), 10)
    mm = fit_memory(build_model("cnn", (1, 8, 8), 10), (1, 8, 8), 10, "sgd", 0.0, "cpu", probe_batches=(1, 2, 4, 8))
    for target in (6, 20, 33):  # a budget that holds exactly `target` samples
        budget = mm.predict(target) + 0.5 * (mm.act_slope + mm.batch_slope)
        assert mm.max_batch(budget) == target
        cfg = _cfg("train.micro_batch=-1", f"batching.memory_budget_gb={budget / 1e9!r}")
        state = torch.get_rng_state()
        got = micro_batch_of(cfg, model, _Bundle(), torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), state)  # the probe leaves the random stream alone
        assert got == max(d for d in range(1, target + 1) if 64 % d == 0)
    big = mm.predict(64) * 2
    assert micro_batch_of(_cfg("train.micro_batch=-1", f"batching.memory_budget_gb={big / 1e9!r}"), model,
                          _Bundle(), torch.device("cpu")) == 0  # the whole batch fits: one pass


def test_auto_micro_batch_refusals_name_the_budget():
    from lbfl_mpi.models import build_model

    model = build_model("cnn", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"train\.micro_batch=-1: on CPU .*batching\.memory_budget_gb"):
        micro_batch_of(_cfg("train.micro_batch=-1"), model, _Bundle(), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"batching\.memory_budget_gb=1e-06 does not hold"):
        micro_batch_of(_cfg("train.micro_batch=-1", "batching.memory_budget_gb=0.000001"), model, _Bundle(),
                       torch.device("cpu"))


def test_largest_divisor():
    assert [largest_divisor_at_most(64, c) for c in (1, 5, 8, 31, 32, 100)] == [1, 4, 8, 16, 32, 64]
    assert largest_divisor_at_most(13, 12) == 1


@pytest.mark.parametrize("sets,named", [
    (["train.batch_size=8", "train.micro_batch=3"], "train.micro_batch"),         # does not divide
    (["train.micro_batch=-2"], "train.micro_batch"),
    (["train.batch_size=8", "model.ghost_batch=3"], "model.ghost_batch"),                       # does not divide
    (["train.batch_size=16", "train.micro_batch=8", "model.ghost_batch=3"], "train.micro_batch=8"),  # per pass
    (["train.batch_size=8", "train.micro_batch=4", "scaling.method='gain'", "scaling.small_batch=2"],
     "scaling.small_batch"),
])
def test_bad_micro_batch_settings_name_the_key(sets, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, sets)
