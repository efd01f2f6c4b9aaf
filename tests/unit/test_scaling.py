"""The paper's method: Eq. 8 with EWMA and phase, U(X) polarity, noise scale and gain, the teacher."""
import math

import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.scaling.critical import GradChange, is_critical
from lbfl_mpi.scaling.noise_scale import NoiseScale, layer_sq_norms, two_batch_estimates
from lbfl_mpi.scaling.step import scale_grads_, step_factor
from lbfl_mpi.scaling.teacher import ChunkLayout, Teacher, cosine


def test_eq8_ewma_closed_form_and_phase():
    raw = GradChange()
    assert [raw.update(v) for v in (4.0, 5.0, 2.5)] == pytest.approx([0.0, 0.25, 0.5])
    smooth = GradChange(ewma=0.5)
    # s_1 = delta_1 = 0.25; s_2 = 0.5 * 0.25 + 0.5 * 0.5
    assert [smooth.update(v) for v in (4.0, 5.0, 2.5)] == pytest.approx([0.0, 0.25, 0.375])
    assert is_critical(0.5, 0.5) and not is_critical(0.49, 0.5)
    restored = GradChange(ewma=0.5)
    restored.load_state_dict(smooth.state_dict())
    assert restored.update(2.5) == pytest.approx(0.5 * 0.375)
    with pytest.raises(ValueError):
        GradChange(ewma=1.0)


def test_polarity_picks_the_scaled_regime():
    assert step_factor(True, 4.0, "experiments") == 4.0 and step_factor(False, 4.0, "experiments") == 1.0
    assert step_factor(True, 4.0, "equation") == 1.0 and step_factor(False, 4.0, "equation") == 4.0
    with pytest.raises(ValueError):
        step_factor(True, 4.0, "other")
    g = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    scale_grads_(g, 2.5)
    assert_close(g[0], torch.tensor([2.5, -5.0])) and assert_close(g[1], torch.tensor([[7.5]]))


def test_two_batch_estimates_are_exact_on_expected_norms():
    g2, tr = torch.tensor([4.0, 1.0], dtype=torch.float64), torch.tensor([64.0, 8.0], dtype=torch.float64)
    b, B = 8.0, 64.0
    small, big = g2 + tr / b, g2 + tr / B  # E|G_b|^2 = |G|^2 + tr/b
    est_g2, est_tr = two_batch_estimates(small, big, b, B)
    assert_close(est_g2, g2)
    assert_close(est_tr, tr)


def _synthetic_steps(ns, G, sigma, b, W, steps, seed=0):
    """Per step: W local gradients of batch b (G + noise of variance sigma^2 / b per coordinate) and
    their mean (batch W b), as BSP would see them."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        local = [[G[i] + sigma[i] / math.sqrt(b) * torch.randn(ns[i], generator=gen, dtype=torch.float64)
                  for i in range(len(ns))] for _ in range(W)]
        big = [sum(loc[i] for loc in local) / W for i in range(len(ns))]
        small_sq = torch.stack([layer_sq_norms(loc) for loc in local]).mean(0)
        yield small_sq, layer_sq_norms(big)


def test_gain_recovers_a_known_ratio_from_noisy_gradients():
    torch.manual_seed(0)
    ns = [2000, 500, 4000]
    G = [torch.randn(n, dtype=torch.float64) * s for n, s in zip(ns, (0.05, 0.2, 0.02))]
    sigma = [1.0, 0.5, 0.3]
    b, W, b_s = 16, 4, 4
    ns_est = NoiseScale(len(ns), beta=0.95)
    for small_sq, big_sq in _synthetic_steps(ns, G, sigma, b, W, steps=300):
        ns_est.update(small_sq, big_sq, b, W * b)
    g2 = torch.tensor([float(g.pow(2).sum()) for g in G], dtype=torch.float64)
    tr = torch.tensor([n * s**2 for n, s in zip(ns, sigma)], dtype=torch.float64)
    expect_r = torch.sqrt((g2 + tr / b_s) / (g2 + tr / (W * b)))
    assert_close(ns_est.gain(b_s, W * b), expect_r, rtol=0.10, atol=0)
    assert ns_est.b_simple() == pytest.approx(float(tr.sum() / g2.sum()), rel=0.10)
    assert (expect_r > 1.2).all()  # the test is not trivially r = 1


def test_gain_is_one_before_data_and_bounded_by_pure_noise():
    est = NoiseScale(2)
    assert_close(est.gain(4, 64), torch.ones(2, dtype=torch.float64)) and math.isnan(est.b_simple())
    est.update(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0]), 4, 64)  # noisy: negative estimates clip
    r = est.gain(4, 64)
    assert ((r >= 1.0 - 1e-12) & (r <= math.sqrt(64 / 4) + 1e-12)).all()


def test_chunk_layout_round_trips():
    tensors = [torch.randn(3, 5), torch.randn(7), torch.randn(2)]
    layout = ChunkLayout([t.numel() for t in tensors], chunk=4, device="cpu")
    scales = torch.tensor([2.0, 0.5, 1.0])
    chunks = layout.to_chunks(tensors, scales)
    assert chunks.shape == (4 + 2 + 1, 4) and layout.mask.sum() == 15 + 7 + 2
    back = layout.from_chunks(chunks, scales, tensors)
    for a, b in zip(back, tensors):
        assert_close(a, b)


def test_teacher_learns_a_known_variance_per_layer():
    # pairs g_s = G + s * noise, declared nested (b_s = 2 inside b_big = 8): the teacher reads
    # sigma^2 = s^2 / (1/2 - 1/8) from them and, applied at the same batch, injects s^2 again
    # (the calibration itself: tests/unit/test_teacher_calibration.py)
    torch.manual_seed(0)
    ns, sigma = [384, 250, 520], [0.5, 1.0, 2.0]
    teacher = Teacher(ns, "cpu", chunk=32, hidden=32, lr=1e-2, seed=0, b_small=2)
    gen = torch.Generator().manual_seed(1)
    nlls = []
    for _ in range(300):
        big = [torch.randn(n, generator=gen) for n in ns]
        smalls = [[g + s * torch.randn(g.shape, generator=gen) for g, s in zip(big, sigma)] for _ in range(4)]
        nlls.append(teacher.train_step(big, smalls, b_big=8))
    # the Gaussian NLL at the truth: 1/2 mean(log s^2 + 1) in units of each layer's RMS of G (~1)
    truth = 0.5 * sum(n * (math.log(s**2) + 1) for n, s in zip(ns, sigma)) / sum(ns)
    assert sum(nlls[-50:]) / 50 == pytest.approx(truth, abs=0.05)
    big = [torch.randn(n, generator=gen) for n in ns]
    mu, std = teacher.predict(big, b_apply=8)
    for i, s in enumerate(sigma):
        assert float(std[i].pow(2).mean()) == pytest.approx(s**2, rel=0.15), i
        assert cosine([mu[i]], [big[i]]) > 0.9  # the mean stays G_large (the truth is g_small = G + noise)
    # G~ = a G + s eps, computed in place layer by layer, agrees with the chunked prediction:
    # its mean over many draws is mu and its spread is std (layer sizes leave partial chunks)
    draws = torch.stack([torch.cat([t.reshape(-1) for t in teacher.sample(big, step=k, b_apply=8)])
                         for k in range(400)])
    flat_mu = torch.cat([t.reshape(-1) for t in mu])
    flat_std = torch.cat([t.reshape(-1) for t in std])
    assert_close(draws.mean(0), flat_mu, atol=float(4 * flat_std.max() / 20), rtol=0)
    assert float(draws.std(0).pow(2).mean()) == pytest.approx(float(flat_std.pow(2).mean()), rel=0.1)
    # the same seed and step draw the same G~ (BSP ranks must agree)
    a, b = teacher.sample(big, step=7, b_apply=8), teacher.sample(big, step=7, b_apply=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_teacher_retrains_on_a_critical_onset_without_extending_a_running_training():
    from types import SimpleNamespace

    from lbfl_mpi.config import load_config
    from lbfl_mpi.scaling.stats import GradStats
    from lbfl_mpi.scaling.transform import GradTransform

    cfg = load_config(None, ["scaling.method=teacher", "scaling.small_batch=2", "scaling.teacher_steps=3",
                             "scaling.threshold=0.5", "train.batch_size=4"])
    p = torch.nn.Parameter(torch.zeros(8))
    tr = GradTransform(cfg, SimpleNamespace(world_size=1), [p], 4, "cpu")
    trained = []
    # |G|^2: Eq. 8 is 3 at steps 4 and 6 (critical onsets), 0 elsewhere
    for step, sq in enumerate([1, 1, 1, 1, 4, 4, 16, 16, 16, 16]):
        g = torch.full((8,), math.sqrt(sq / 8))
        p.grad = g.clone()
        micro = torch.stack([g * 1.1, g * 0.9])
        out = tr.apply(GradStats(step=step, batch=4, micro=micro, collective=False))
        assert out["phase"] == int(step in (4, 6))
        if math.isfinite(out["teacher_nll"]):
            trained.append(step)
        # the teacher is applied once its first training is done
        assert math.isnan(out["teacher_cos"]) == (step < 2)
    # 0-2: the initial training; 4-6: retraining after the onset at 4; the onset at 6 falls inside it
    assert trained == [0, 1, 2, 4, 5, 6]


@pytest.mark.parametrize("method,optimizer,warned", [
    ("step", "adam", True), ("gain", "adam", True), ("step", "sgd", False), ("gain", "sgd", False),
    ("teacher", "adam", False), ("none", "adam", False)])
def test_adam_with_scale_transforms_warns(method, optimizer, warned):
    """Adam (Kingma & Ba 2015) divides m_t by sqrt(v_t), so a constant gradient factor (U(X) of Tyagi 2025
    Eq. 6/7, or the gain r_l) cancels once the moments adapt: step/gain with Adam gets one warning line."""
    from lbfl_mpi.config import load_config
    from lbfl_mpi.scaling.transform import scaling_warnings

    sets = [f"scaling.method={method}", f"train.optimizer={optimizer}"]
    if method in ("gain", "teacher"):
        sets.append("scaling.small_batch=2")
    lines = scaling_warnings(load_config(None, sets))
    assert len(lines) == int(warned)
    if warned:
        assert "\n" not in lines[0] and "invariant to a constant gradient scale" in lines[0]
