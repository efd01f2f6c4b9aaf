"""AdaScale (scaling/adascale.py): the gain against its closed form and limits, the progress counter,
and the refusals of the combinations it does not support."""
from __future__ import annotations

import math

import pytest
import torch

from lbfl_mpi.config import ConfigError, load_config, validate_for_world
from lbfl_mpi.scaling.adascale import AdaScale, adascale_gain
from lbfl_mpi.scaling.noise_scale import NoiseScale


def test_gain_closed_form_and_limits():
    # |G|^2 = 1, tr = 32, B0 = 32, B = 128: (1 + 1) / (0.25 + 1)
    assert adascale_gain(1.0, 32.0, 32, 128) == pytest.approx(2.0 / 1.25, rel=1e-12)
    assert adascale_gain(1.0, 0.0, 32, 128) == 1.0                         # no noise: the lr is unchanged
    assert adascale_gain(1e-12, 1.0, 32, 128) == pytest.approx(4.0, rel=1e-6)  # pure noise: S = B / B0
    assert adascale_gain(-5.0, 1.0, 32, 128) == pytest.approx(4.0, rel=1e-6)  # a negative estimate clips
    assert adascale_gain(1.0, -3.0, 32, 128) == 1.0
    for g2, tr in ((0.3, 7.0), (2.0, 100.0), (1e-3, 1e-2)):
        r = adascale_gain(g2, tr, 16, 256)
        assert 1.0 <= r <= 16.0


def test_gain_reads_the_noise_scale_estimates():
    """Two-batch estimates of known |G|^2 = 2 and tr = 40 (per-layer values summed): E|g_b|^2 =
    |G|^2 + tr / b at b = 8 and B = 64; the gain is then the closed form at B0 = 16, B = 64."""
    noise = NoiseScale(2, beta=0.0)
    g2, tr = torch.tensor([0.5, 1.5]), torch.tensor([10.0, 30.0])
    noise.update(g2 + tr / 8, g2 + tr / 64, 8, 64)
    a = AdaScale(16, total=100)
    assert a.update(NoiseScale(2), 64) == 1.0  # no estimate yet: r = 1
    r = a.update(noise, 64)
    assert r == pytest.approx((40 / 16 + 2) / (40 / 64 + 2), rel=1e-9)
    assert noise.b_simple() == pytest.approx(20.0)
    assert r == pytest.approx((noise.b_simple() / 16 + 1) / (noise.b_simple() / 64 + 1), rel=1e-9)


def test_progress_counts_gains_and_ends_at_the_total():
    a = AdaScale(16, total=10)
    gains = [1.0, 2.5, 3.0, 2.0, 1.75]
    taus = []
    for g in gains:
        assert not a.finished
        a.gain = g
        a.advance()
        taus.append(a.tau)
    assert taus == pytest.approx([1.0, 3.5, 6.5, 8.5, 10.25])
    assert a.finished
    b = AdaScale(16, total=10)
    b.load_state_dict(a.state_dict())
    assert b.tau == a.tau and b.gain == a.gain and b.finished
    with pytest.raises(ValueError, match="not finite"):
        b.load_state_dict({"tau": torch.tensor(math.inf), "gain": 1.0})


@pytest.mark.parametrize("sets,named", [
    (["sync.mode='fedavg'"], "sync.mode"),
    (["train.optimizer='adam'"], "train.optimizer"),
    (["train.scale_lr=true"], "train.scale_lr"),
])
def test_adascale_refusals_name_the_key(sets, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, ["scaling.method='adascale'", *sets])


def test_one_rank_needs_micro_batches_for_the_estimate():
    cfg = load_config(None, ["scaling.method='adascale'"])
    validate_for_world(cfg, 2)  # the gradient exchange gives the estimate
    with pytest.raises(ConfigError, match=r"scaling\.small_batch"):
        validate_for_world(cfg, 1)
    validate_for_world(load_config(None, ["scaling.method='adascale'", "scaling.small_batch=8"]), 1)
    validate_for_world(load_config(None, ["scaling.method='adascale'", "train.micro_batch=8"]), 1)
