"""Memory (Eq. 3) and compute/step-time (Eq. 2) batch models: closed forms, exact fits, smoke runs."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lbfl_mpi.models import build_model
from lbfl_mpi.plan.compute import (
    ComputeModel,
    ComputeProbe,
    fit_compute,
    fit_from_probes,
    fit_line,
    ring_allreduce_time,
)
from lbfl_mpi.plan.memory import (
    MemoryModel,
    MemoryProbe,
    activation_bytes,
    fit_memory,
    measure_peak_bytes,
    static_bytes,
)


def _batch(shape, classes, b):
    return torch.randn(b, *shape), torch.randint(0, classes, (b,))


def _three_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


# ---------------------------------------------------------------- static terms


def test_static_bytes_closed_form():
    model = nn.Linear(7, 3)  # 7*3 weights + 3 biases, float32
    p = (7 * 3 + 3) * 4
    assert static_bytes(model, "sgd", momentum=0.9) == (p, p, p)
    assert static_bytes(model, "sgd", momentum=0.0) == (p, p, 0)
    assert static_bytes(model, "adam") == (p, p, 2 * p)


def test_static_bytes_frozen_params_have_no_grad_or_state():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    total = ((4 * 4 + 4) + (4 * 2 + 2)) * 4
    trainable = (4 * 2 + 2) * 4
    assert static_bytes(model, "adam") == (total, trainable, 2 * trainable)


def test_static_bytes_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="lion"):
        static_bytes(nn.Linear(2, 2), "lion")


def test_static_bytes_of_lars_and_lamb():
    """LARS keeps SGD's one momentum buffer (none without momentum), LAMB Adam's two moments."""
    model = nn.Linear(4, 3)
    n = (4 * 3 + 3) * 4
    assert static_bytes(model, "lars", momentum=0.9) == (n, n, n)
    assert static_bytes(model, "lars", momentum=0.0) == (n, n, 0)
    assert static_bytes(model, "lamb") == (n, n, 2 * n)


# ---------------------------------------------------------------- activations


def _hand_act_bytes(b: int) -> int:
    # Saved for backward, excluding x / y (M_batch) and W2 (M_model):
    #   ReLU output [b, 20] float32 (also Linear2's input: same storage, counted once),
    #   log_softmax output [b, 5] float32 (also nll_loss's input: same storage),
    #   nll_loss's scalar total_weight (4 bytes).
    # Linear1 keeps only x: its weight is not needed because x does not require grad.
    return 20 * 4 * b + 5 * 4 * b + 4


@pytest.mark.parametrize("b", [1, 3, 16])
def test_activation_bytes_exact_on_known_graph(b):
    model = _three_layer()
    x, y = _batch((10,), 5, b)
    assert activation_bytes(model, x, y) == _hand_act_bytes(b)


def test_activation_bytes_leaves_model_state_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch((4,), 2, 8)
    assert activation_bytes(model, x, y) > 0
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- fit_memory


def test_fit_memory_exact_on_linear_model():
    model = _three_layer()
    mm = fit_memory(model, (10,), 5, "sgd", 0.9, "cpu", probe_batches=(1, 2, 4, 8))
    assert [p.batch for p in mm.probes] == [1, 2, 4, 8]
    assert mm.static == sum(static_bytes(model, "sgd", 0.9))
    # x is 40 bytes/sample, y 8 bytes/sample
    assert mm.batch_slope == pytest.approx(48.0, abs=1e-9)
    assert mm.batch_intercept == pytest.approx(0.0, abs=1e-9)
    assert mm.act_slope == pytest.approx(100.0, abs=1e-9)
    assert mm.act_intercept == pytest.approx(4.0, abs=1e-9)
    assert all(err < 1e-12 for _, err in mm.fit_errors())
    x, y = _batch((10,), 5, 37)
    measured = activation_bytes(model, x, y) + x.nbytes + y.nbytes
    assert mm.predict(37) - mm.static == pytest.approx(measured, rel=1e-12)


@pytest.mark.parametrize("name,shape", [("cnn", (1, 8, 8)), ("resnet18", (3, 32, 32))])
def test_fit_memory_extrapolates_on_real_models(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    mm = fit_memory(model, shape, 10, "sgd", 0.9, "cpu", probe_batches=(1, 2, 4, 8))
    assert mm.act_slope > 0 and mm.batch_slope > 0
    x, y = _batch(shape, 10, 24)
    measured = activation_bytes(model, x, y) + x.nbytes + y.nbytes
    predicted = mm.predict(24) - mm.static
    assert abs(predicted - measured) / measured < 0.10


def test_fit_memory_calibrated_by_a_peak_function_adds_the_uncounted_line_and_headroom():
    """With an allocator reading (here a fake one: counted bytes + 1 MiB + 300 B per sample, as a
    convolution workspace and backward temporaries would add), M_other is that line exactly, the
    prediction at a held-out batch equals the reading, and max_batch keeps ALLOCATOR_HEADROOM free."""
    from lbfl_mpi.plan.memory import ALLOCATOR_HEADROOM

    model = _three_layer()
    plain = fit_memory(copy.deepcopy(model), (10,), 5, "sgd", 0.9, "cpu", probe_batches=(1, 2, 4, 8))
    assert not plain.calibrated and plain.other(100) == 0 and plain.headroom == 0

    def peak(b):
        return plain.counted(b) + 2**20 + 300 * b

    mm = fit_memory(copy.deepcopy(model), (10,), 5, "sgd", 0.9, "cpu", probe_batches=(1, 2, 4, 8), peak=peak)
    assert mm.calibrated and [p.peak_bytes for p in mm.probes] == [int(peak(b)) for b in (1, 2, 4, 8)]
    assert mm.other_intercept == pytest.approx(2**20, abs=1.0) and mm.other_slope == pytest.approx(300, abs=1e-3)
    assert mm.predict(64) == pytest.approx(peak(64), rel=1e-9)
    assert mm.counted(64) == pytest.approx(plain.predict(64), rel=1e-12)
    budget = 64 * 2**20
    want = int((1 - ALLOCATOR_HEADROOM) * budget - mm.predict(0)) // int(round(mm.predict(1) - mm.predict(0)))
    assert abs(mm.max_batch(budget) - want) <= 1
    assert mm.predict(mm.max_batch(budget)) <= (1 - ALLOCATOR_HEADROOM) * budget < mm.predict(mm.max_batch(budget) + 1)


def test_activation_bytes_keeps_no_activation_alive():
    """The counting pass frees what it saw: every layer output is dead once it returns, with the
    garbage collector off (the reference: a plain forward + loss, whose outputs die with the loss).
    A pack hook returning the tensor it was given made an uncollectable cycle per saved output."""
    import gc
    import weakref

    model = build_model("resnet18", (3, 32, 32), 10)
    refs = []
    for mod in model.modules():
        if not list(mod.children()):
            mod.register_forward_hook(lambda mod, i, o: refs.append(weakref.ref(o)))
    x, y = _batch((3, 32, 32), 10, 2)
    gc.disable()
    try:
        torch.nn.functional.cross_entropy(model(x), y)
        assert refs and all(r() is None for r in refs)
        refs.clear()
        assert activation_bytes(model, x, y) > 0
        assert len(refs) > 20 and [r for r in refs if r() is not None] == []
    finally:
        gc.enable()


def test_measure_peak_bytes_is_none_on_cpu():
    assert measure_peak_bytes(nn.Linear(3, 2), (3,), 2, 4, "cpu") is None


# ---------------------------------------------------------------- max_batch


def _mm(static=1000, slope=10.0, intercept=0.0):
    return MemoryModel(model_bytes=static, grad_bytes=0, opt_bytes=0, act_slope=slope, act_intercept=intercept,
                       batch_slope=0.0, batch_intercept=0.0, probes=[])


def test_max_batch_closed_form():
    mm = _mm()
    assert mm.predict(100) == 2000
    assert mm.max_batch(2000) == 100
    assert mm.max_batch(2009.9) == 100
    assert mm.max_batch(2010) == 101
    # split across the act and batch lines and the three static terms
    split = MemoryModel(400, 300, 200, 6.0, 50.0, 4.0, 50.0, [])
    assert split.max_batch(2000) == 100
    assert split.predict(100) == 2000


def test_max_batch_zero_when_static_does_not_fit():
    assert _mm().max_batch(999) == 0
    assert _mm(intercept=5.0).max_batch(1004) == 0
    assert _mm().max_batch(1000) == 0  # b = 0 fits, b = 1 does not
    assert _mm().max_batch(1010) == 1


def test_memory_fit_errors_report_relative_error():
    mm = _mm(slope=10.0)
    mm.probes = [MemoryProbe(batch=4, act_bytes=30, batch_bytes=10), MemoryProbe(batch=2, act_bytes=20, batch_bytes=0)]
    assert mm.fit_errors() == [(4, 0.0), (2, 0.0)]
    mm.probes = [MemoryProbe(batch=4, act_bytes=50, batch_bytes=0)]
    assert mm.fit_errors() == [(4, pytest.approx(0.2))]


# ---------------------------------------------------------------- compute model


def test_relative_fit_weights_small_batches_like_large_ones():
    # one outlier at b=1 (+50 %): an absolute fit barely moves for it, the relative fit trades it
    # against the large-batch points, and its relative errors are smaller in total
    bs = [1, 2, 4, 8, 16, 32]
    ys = [0.01 + 0.001 * b for b in bs]
    ys[0] *= 1.5
    a_abs, b_abs = fit_line(bs, ys)
    a_rel, b_rel = fit_line(bs, ys, relative=True)
    rel = lambda a, s: sum(((a + s * x) - y) ** 2 / y**2 for x, y in zip(bs, ys))
    assert rel(a_rel, b_rel) < rel(a_abs, b_abs)
    w = 1 / np.asarray(ys)
    slope, intercept = np.polyfit(bs, ys, 1, w=w)
    assert (a_rel, b_rel) == pytest.approx((intercept, slope), rel=1e-12)


def test_fit_from_exact_linear_probes_recovers_coefficients():
    alpha, beta, gamma, delta = 0.003, 0.0005, 1e-4, 2e-6
    probes = [ComputeProbe(b, alpha + beta * b, gamma + delta * b) for b in (1, 2, 4, 8, 16, 32)]
    cm = fit_from_probes(probes)
    assert cm.alpha == pytest.approx(alpha, rel=1e-9)
    assert cm.beta == pytest.approx(beta, rel=1e-9)
    assert cm.gamma == pytest.approx(gamma, rel=1e-9)
    assert cm.delta == pytest.approx(delta, rel=1e-9)
    assert all(err < 1e-9 for _, err in cm.fit_errors())
    assert cm.throughput(10) == pytest.approx(10 / (alpha + beta * 10 + gamma + delta * 10))


def _saturating_probes():
    # throughput = 1000 * b / (b + 4): 200, 333, 500, 667, 800, 889, 941, 970, 985 samples/s
    bs = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    return [ComputeProbe(b, (b + 4) / 1000.0, 0.0) for b in bs]


def test_recommended_batch_picks_the_knee():
    cm = fit_from_probes(_saturating_probes())
    # best measured is 985 at b=256; 95 % of it is 936 -> smallest probe reaching it is b=64 (941)
    assert cm.recommended_batch() == 64
    # capped at 40: best among b <= 32 is 889, 95 % = 844.6 -> b=32
    assert cm.recommended_batch(max_batch=40) == 32
    assert cm.recommended_batch(max_batch=8) == 8


def test_recommended_batch_counts_t_mov():
    # t_c alone saturates at b=2, but a large per-sample copy time keeps throughput rising to b=8
    probes = [ComputeProbe(1, 1.0, 0.0), ComputeProbe(2, 1.0, 0.0), ComputeProbe(4, 1.0, 1.0),
              ComputeProbe(8, 1.0, 1.0)]
    assert fit_from_probes(probes).recommended_batch() == 8


def test_ring_allreduce_time_closed_form():
    n, bw, lat = 100 * 2**20, 10e9, 5e-6
    assert ring_allreduce_time(n, 1, bw, lat) == 0.0
    assert ring_allreduce_time(n, 4, bw, lat) == pytest.approx(2 * 3 / 4 * n / bw + 2 * 3 * lat)
    assert ring_allreduce_time(n, 2, bw, 0.0) == pytest.approx(n / bw)


def test_epoch_time_closed_form():
    cm = ComputeModel(alpha=0.01, beta=0.001, gamma=0.002, delta=0.0001, probes=[])
    d, p, b, t_sync = 60000, 4, 32, 0.05
    step = 0.01 + 0.001 * 32 + 0.002 + 0.0001 * 32
    assert cm.epoch_time(b, p, d, t_sync) == pytest.approx(d / (p * b) * (step + t_sync))
    assert cm.epoch_time(b, p, d, t_sync, period=8) == pytest.approx(d / (p * b) * (step + t_sync / 8))
    assert cm.epoch_time(b, 1, d, 0.0) == pytest.approx(d / b * step)


def test_fit_compute_smoke_on_mlp():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model("mlp", shape, 10)
    before = [p.detach().clone() for p in model.parameters()]
    batches = (1, 4, 16)
    cm = fit_compute(model, shape, 10, "cpu", probe_batches=batches, rounds=2, repeats=2)
    assert [p.batch for p in cm.probes] == list(batches)
    for p in cm.probes:
        assert math.isfinite(p.t_compute) and p.t_compute > 0
        assert math.isfinite(p.t_mov) and p.t_mov > 0
    bs = [p.batch for p in cm.probes]
    tc, tm = [p.t_compute for p in cm.probes], [p.t_mov for p in cm.probes]
    beta, alpha = np.polyfit(bs, tc, 1, w=1 / np.asarray(tc))  # relative residuals
    delta, gamma = np.polyfit(bs, tm, 1, w=1 / np.asarray(tm))
    assert (cm.alpha, cm.beta, cm.gamma, cm.delta) == pytest.approx((alpha, beta, gamma, delta), rel=1e-9, abs=1e-15)
    assert cm.recommended_batch() in batches
    # timing runs on a copy: the caller's weights are untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
