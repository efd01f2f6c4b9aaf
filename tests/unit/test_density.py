"""Phase-aware top-k density (compress/density.py): the step's density against its closed form, the
error-feedback residual across density changes against a reference written here, and the refusals."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.compress.density import max_density, step_density
from lbfl_mpi.compress.topk import TopKCompressor, k_for
from lbfl_mpi.config import ConfigError, load_config


def _cc(*sets):
    return load_config(None, ["compress.method='topk'", *sets]).compress


def test_step_density_closed_form():
    fixed = _cc("compress.density=0.01", "compress.density_critical=0.2")
    assert step_density(fixed, True, 512) == 0.01 and max_density(fixed) == 0.01  # fixed ignores the phase
    ad = _cc("compress.density=0.01", "compress.density_critical=0.2", "compress.density_mode='adaptive'")
    assert step_density(ad, False, 512) == 0.01 and step_density(ad, True, 512) == 0.2 and max_density(ad) == 0.2
    both = _cc("compress.density=0.01", "compress.density_critical=0.2", "compress.density_mode='adaptive'",
               "compress.density_batch_ref=256")
    assert step_density(both, True, 1024) == pytest.approx(0.2 * 256 / 1024)
    assert step_density(both, False, 128) == 0.01  # below the reference: never denser


def test_the_residual_carries_across_density_changes():
    """r_t = acc_t - C_k_t(acc_t), acc_t = x_t + r_{t-1}, with k_t changing every step: the reference is
    torch.topk on |acc| written out, and what was sent plus the last residual is what was fed in."""
    n = 4000
    comp = TopKCompressor(_cc("compress.density=0.01"), n, torch.device("cpu"), [n], seed=0)
    g = torch.Generator().manual_seed(3)
    r = torch.zeros(n)
    fed, sent = torch.zeros(n), torch.zeros(n)
    for d in (0.01, 0.2, 0.01, 0.05, 0.2, 0.001):
        x = torch.randn(n, generator=g)
        comp.density = d
        values, idx = comp.compress(x)
        acc = x + r
        k = k_for(n, d)
        ref_idx = torch.topk(acc.abs(), k).indices
        assert idx.numel() == k and set(idx.tolist()) == set(ref_idx.tolist())
        assert_close(values, acc[idx])
        r = acc.clone()
        r[ref_idx] = 0
        assert_close(comp.residual, r, rtol=0, atol=0)
        fed += x
        sent.index_add_(0, idx, values)
    assert_close(sent + comp.residual, fed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sets,named", [
    (["compress.method='none'", "compress.density_mode='adaptive'"], "compress.density_mode"),
    (["compress.method='none'", "compress.density_batch_ref=64"], "compress.density_batch_ref"),
    (["compress.method='topk'", "compress.density_mode='adaptive'", "fl.clients=4"], "compress.density_mode"),
    (["compress.method='topk'", "compress.density_critical=0"], "compress.density_critical"),
])
def test_density_refusals_name_the_key(sets, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, sets)
