"""Top-k selection and error feedback against closed-form references."""
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.compress.topk import TopKCompressor, k_for, select, topk_exact, topk_sampled
from lbfl_mpi.config import load_config


def _densify(values, idx, n):
    out = torch.zeros(n)
    out.index_put_((idx,), values, accumulate=True)
    return out


def _cfg(**kw):
    return load_config(None, ["compress.method=topk", *[f"compress.{k}={v}" for k, v in kw.items()]]).compress


def test_exact_keeps_the_k_largest_magnitudes():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    k = 137
    idx = topk_exact(x, k)
    assert idx.numel() == k and idx.unique().numel() == k
    expect = torch.argsort(x.abs(), descending=True)[:k]
    assert set(idx.tolist()) == set(expect.tolist())
    assert x.abs()[idx].min() >= x.abs().sort(descending=True).values[k]


@pytest.mark.parametrize("dist", ["normal", "cauchy", "lognormal_signed", "sparse_spikes"])
@pytest.mark.parametrize("n,density", [(100_000, 0.01), (1_000_000, 0.001), (5_000, 0.01)])
def test_sampled_density_within_25_percent(dist, n, density):
    g = torch.Generator().manual_seed(n + len(dist))
    if dist == "normal":
        x = torch.randn(n, generator=g)
    elif dist == "cauchy":
        x = torch.distributions.Cauchy(0.0, 1.0).sample((n,))
    elif dist == "lognormal_signed":
        x = torch.exp(3 * torch.randn(n, generator=g)) * torch.sign(torch.randn(n, generator=g))
    else:  # mostly tiny values with a few huge ones: a heavy tail the sample may miss
        x = torch.randn(n, generator=g) * 1e-3
        x[torch.randint(0, n, (n // 500,), generator=g)] = 1e3
    k = k_for(n, density)
    idx = topk_sampled(x, k, torch.Generator().manual_seed(1), sample_fraction=0.01, tolerance=0.2)
    assert idx.unique().numel() == idx.numel()
    assert abs(idx.numel() - k) <= 0.25 * k, (idx.numel(), k)
    # whatever was kept is large: no dropped entry exceeds the smallest kept one by much
    kept_min = x.abs()[idx].min()
    mask = torch.ones(n, dtype=torch.bool)
    mask[idx] = False
    assert (x.abs()[mask] > kept_min).sum() <= 0.25 * k


def test_layerwise_keeps_the_density_in_every_tensor():
    sizes = [1000, 50, 20_000, 7]
    x = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(3))
    x[:1000] *= 100  # a global top-k would take almost everything from the first tensor
    idx = select(x, 0.05, "exact", "layerwise", sizes)
    start = 0
    for n in sizes:
        inside = idx[(idx >= start) & (idx < start + n)]
        assert inside.numel() == k_for(n, 0.05)
        assert set(inside.tolist()) == set((topk_exact(x[start:start + n], k_for(n, 0.05)) + start).tolist())
        start += n
    glob = select(x, 0.05, "exact", "global", sizes)
    assert (glob < 1000).sum() > 0.9 * glob.numel()


@pytest.mark.parametrize("selection,scope", [("exact", "global"), ("sampled", "global"), ("exact", "layerwise")])
def test_error_feedback_conserves_the_gradient_sum(selection, scope):
    n, steps = 5_000, 12
    comp = TopKCompressor(_cfg(density=0.02, selection=selection, scope=scope), n, torch.device("cpu"),
                          [3000, 2000], seed=0)
    g = torch.Generator().manual_seed(5)
    raw_sum, sent_sum = torch.zeros(n), torch.zeros(n)
    for _ in range(steps):
        x = torch.randn(n, generator=g)
        raw_sum += x
        values, idx = comp.compress(x)
        sent_sum += _densify(values, idx, n)
    assert_close(sent_sum + comp.residual, raw_sum, rtol=1e-5, atol=1e-5)
    assert comp.residual_norm_sq() == pytest.approx(float(comp.residual.double().pow(2).sum()))


def test_without_error_feedback_nothing_is_carried():
    n = 2_000
    comp = TopKCompressor(_cfg(density=0.01, error_feedback="false"), n, torch.device("cpu"), [n])
    x = torch.randn(n, generator=torch.Generator().manual_seed(9))
    values, idx = comp.compress(x)
    assert set(idx.tolist()) == set(topk_exact(x, k_for(n, 0.01)).tolist())
    assert_close(values, x[idx])
    values2, idx2 = comp.compress(x)  # same input, same output: no residual crept in
    assert torch.equal(idx.sort().values, idx2.sort().values)
    assert comp.residual_norm_sq() == 0.0 and float(comp.residual.abs().sum()) == 0.0


def test_density_one_sends_everything_unchanged():
    n = 300
    comp = TopKCompressor(_cfg(density=1.0), n, torch.device("cpu"), [n])
    x = torch.randn(n)
    values, idx = comp.compress(x)
    assert torch.equal(_densify(values, idx, n), x)
    assert float(comp.residual.abs().sum()) == 0.0


def test_state_dict_resumes_the_identical_stream():
    n = 20_000
    cfg = _cfg(density=0.01, selection="sampled")
    a = TopKCompressor(cfg, n, torch.device("cpu"), [n], seed=4)
    g = torch.Generator().manual_seed(8)
    xs = [torch.randn(n, generator=g) for _ in range(6)]
    for x in xs[:3]:
        a.compress(x)
    b = TopKCompressor(cfg, n, torch.device("cpu"), [n], seed=999)
    b.load_state_dict(a.state_dict())
    for x in xs[3:]:
        va, ia = a.compress(x)
        vb, ib = b.compress(x)
        assert torch.equal(ia, ib) and torch.equal(va, vb)
