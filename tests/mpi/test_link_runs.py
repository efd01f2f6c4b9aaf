"""hetero.link_* in real 2-rank runs: every exchange's t_link is the ring formula of the bytes it sent
(exchange/link.py), inside t_sync, and nothing else in the run changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args

LAT, GBPS = 4.0, 0.05   # 4 ms, 50 Mb/s = 6.25e6 B/s
LINK = (f"hetero.link_latency_ms=[{LAT}]", f"hetero.link_gbps=[{GBPS}, 1.0]")  # the ring's slowest: 50 Mb/s


def _steps(out, rank=0):
    with open_rank_file(out / f"rank{rank:04d}.h5") as h:
        return read_group(h, "steps")


@pytest.mark.parametrize("mode", [  # a dense allreduce: FedAvg's average (and tests/unit/test_link.py)
    ("sync.mode='bsp'", "compress.method='topk'", "compress.density=0.05"),
    ("sync.mode='fedavg'", "sync.period=4"),
], ids=["bsp-topk", "fedavg"])
def test_t_link_is_the_ring_time_of_the_bytes_sent(tmp_path, mode):
    run_lbfl(tiny_run_args(tmp_path / "link", *mode, *LINK), n=2)
    b = _steps(tmp_path / "link")
    if "compress.method='topk'" in mode:  # the network only costs time (one reference run is enough)
        run_lbfl(tiny_run_args(tmp_path / "plain", *mode), n=2)
        a = _steps(tmp_path / "plain")
        np.testing.assert_array_equal(b["loss"], a["loss"])
        np.testing.assert_array_equal(b["bytes_sent"], a["bytes_sent"])
        assert (np.asarray(a["t_link"]) == 0).all()
    alpha, beta = LAT * 1e-3, GBPS * 1e9 / 8
    sent = np.asarray(b["bytes_sent"], np.float64)
    if "compress.method='topk'" in mode:  # an allgather of this rank's payload, then the 8-byte-slot extras
        # allreduce (2 alpha + e / beta for e bytes of statistics, the same every step)
        extra = np.asarray(b["t_link"]) - (alpha + sent / beta)
        assert (sent > 0).all() and np.ptp(extra) < 1e-9 and 2 * alpha < extra[0] < 2 * alpha + 1e-3
    else:  # one ring allreduce of the dense buffer on the rows that exchanged
        want = np.where(sent > 0, 2 * alpha + sent / beta, 0.0)
        assert_close(torch.from_numpy(np.asarray(b["t_link"])), torch.from_numpy(want), rtol=1e-9, atol=0)
    assert (np.asarray(b["t_sync"]) >= np.asarray(b["t_link"])).all()
    if "sync.mode='fedavg'" in mode:
        assert (np.asarray(b["t_link"])[np.asarray(b["synced"]) == 0] == 0).all() and (sent > 0).sum() == 3
