"""The emulated network (exchange/link.py): the ring-collective formulas against hand-computed values,
the ring's slowest link from per-rank values, the wait of an exchange on a stand-in communicator, and
the config's refusals."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from lbfl_mpi.config import ConfigError, load_config, validate_for_world
from lbfl_mpi.exchange import DenseExchange
from lbfl_mpi.exchange.link import (
    EmulatedLink,
    build_link,
    link_suspended,
    link_wait,
    ring_allgather_s,
    ring_allreduce_s,
)


def test_ring_formulas_by_hand():
    # 4 ranks, 20 ms, 1 Gb/s = 1.25e8 B/s, 10 MB: 2*3*0.02 + 2*3/4*1e7/1.25e8 = 0.12 + 0.12
    assert ring_allreduce_s(1e7, 4, 0.02, 1.25e8) == pytest.approx(0.24, rel=1e-12)
    # allgather of 1 MB per rank: 3*0.02 + 3*1e6/1.25e8 = 0.06 + 0.024
    assert ring_allgather_s(1e6, 4, 0.02, 1.25e8) == pytest.approx(0.084, rel=1e-12)
    assert ring_allreduce_s(1e7, 1, 0.02, 1.25e8) == 0.0 and ring_allgather_s(1e7, 1, 0.02, 1.25e8) == 0.0
    assert ring_allreduce_s(1e7, 2, 0.0, float("inf")) == 0.0


def test_the_ring_runs_at_its_slowest_link():
    link = build_link(SimpleNamespace(link_latency_ms=[5.0, 20.0, 10.0], link_gbps=[10.0, 1.0, 2.0]), 3)
    assert link == EmulatedLink(latency_s=0.02, bytes_per_s=1.25e8, world_size=3)
    only_latency = build_link(SimpleNamespace(link_latency_ms=[3.0], link_gbps=[]), 2)
    assert only_latency.allreduce_s(1e12) == pytest.approx(2 * 0.003)  # unlimited bandwidth
    assert build_link(SimpleNamespace(link_latency_ms=[], link_gbps=[]), 4) is None
    # a bucketed exchange: one latency term per bucket, the bytes once
    assert link.allreduce_s(3e6, calls=5) == pytest.approx(5 * 2 * 2 * 0.02 + 2 * 2 / 3 * 3e6 / 1.25e8)


class _Comm:
    """Four ranks whose allreduce is the identity (the sum of one contribution)."""

    world_size, rank = 4, 0

    def __init__(self, link):
        self.link = link

    def allreduce_(self, buf):
        return buf


def test_an_exchange_waits_the_modelled_time_for_its_bytes():
    link = EmulatedLink(latency_s=0.01, bytes_per_s=1e6, world_size=4)
    comm = _Comm(link)
    ex = DenseExchange(comm, [torch.zeros(1000), torch.zeros(24)])  # 1024 floats + the weight slot
    want = 2 * 3 * 0.01 + 2 * 3 / 4 * ex.nbytes / 1e6
    t0 = time.perf_counter()
    sent = ex.reduce_([torch.ones(1000), torch.ones(24)], 1.0)
    elapsed = time.perf_counter() - t0
    assert sent.t_link == pytest.approx(want, rel=1e-12) and sent.bytes_sent == ex.nbytes == 1025 * 4
    assert elapsed >= want
    with link_suspended(comm):
        assert ex.reduce_([torch.ones(1000), torch.ones(24)], 1.0).t_link == 0.0
    assert comm.link is link
    assert link_wait(SimpleNamespace(world_size=4), "allreduce", 1e9) == 0.0  # no link: no wait


@pytest.mark.parametrize("key", ["hetero.link_latency_ms", "hetero.link_gbps"])
def test_link_values_are_one_or_one_per_rank(key):
    validate_for_world(load_config(None, [f"{key}=[1.0]"]), 4)
    validate_for_world(load_config(None, [f"{key}=[1.0, 2.0, 3.0, 4.0]"]), 4)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r".*one value, or one per rank: 2 given"):
        validate_for_world(load_config(None, [f"{key}=[1.0, 2.0]"]), 4)


@pytest.mark.parametrize("sets", ["hetero.link_latency_ms=[-1.0]", "hetero.link_gbps=[0.0]"])
def test_negative_latency_or_zero_bandwidth_is_refused(sets):
    with pytest.raises(ConfigError, match=sets.split("=")[0].replace(".", r"\.")):
        load_config(None, [sets])
