"""The training package's seams against reference computations: the step row is the HDF5 schema,
components time themselves without a timer passed down, the micro-batch backward equals per-chunk
autograd, the stop agreement runs once per step, and a worker built with injected batches trains
exactly like plain SGD on those batches (1 rank)."""
import copy
import math

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import load_config
from lbfl_mpi.run.stopping import StopAgreement
from lbfl_mpi.scaling.stats import GradStats, GradStatsPass
from lbfl_mpi.telemetry import STEP_COLUMNS, RankLog, StepRow, StepTimer
from lbfl_mpi.telemetry import timers as timers_module
from lbfl_mpi.train import build_worker, train


def test_the_step_row_is_the_rank_file_schema(tmp_path):
    names = list(StepRow.__dataclass_fields__)
    assert names == list(STEP_COLUMNS)
    row = StepRow(step=3, batch_size=7, loss=0.25, synced=1, bytes_sent=1 << 40, t_teacher=1e-3)
    log = RankLog(tmp_path / "r.h5", rank=0, world_size=1, config_json="{}", device="cpu", flush_every=10)
    log.log_row(row)
    log.close()
    with h5py.File(tmp_path / "r.h5", "r") as f:
        for name in names:
            d = f["steps"][name]
            assert d.dtype == np.dtype(STEP_COLUMNS[name]), name
            want = getattr(row, name)
            got = d[0]
            assert (math.isnan(want) and math.isnan(got)) if isinstance(want, float) and math.isnan(want) \
                else got == want, (name, got, want)


def test_lap_split_books_the_measured_parts_and_the_rest(monkeypatch):
    clock = iter([0.0, 1.0, 3.5, 4.0])
    monkeypatch.setattr(timers_module.time, "perf_counter", lambda: next(clock))
    t = StepTimer(torch.device("cpu"))
    t.start()                                     # 0.0
    assert t.lap("compute") == 1.0                # 1.0
    assert t.lap_split("sync", compress=0.5) == 2.5   # 3.5: 0.5 compress, 2.0 sync
    t.lap_split("sync", compress=9.0)             # 4.0: a part never exceeds its lap
    assert t.times == {"compute": 1.0, "sync": 2.0, "compress": 1.0}
    assert sum(t.times.values()) == 4.0


def test_micro_batch_backward_equals_per_chunk_autograd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    ref = copy.deepcopy(model)
    params = list(model.parameters())
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    opt = torch.optim.SGD(params, lr=0.1)
    gp = GradStatsPass(params, micro_batch=4)
    loss, micro = gp.backward(x, y, lambda a, b: F.cross_entropy(model(a), b), lambda v: v,
                              lambda set_to_none: opt.zero_grad(set_to_none=set_to_none))
    rows, losses = [], []
    for xs, ys in zip(x.split(4), y.split(4)):
        ref.zero_grad()
        lj = F.cross_entropy(ref(xs), ys)
        lj.backward()
        losses.append(lj.detach())
        rows.append(torch.cat([p.grad.reshape(-1) for p in ref.parameters()]))
    assert_close(micro, torch.stack(rows))
    assert_close(loss, torch.stack(losses).mean())
    assert_close(torch.cat([p.grad.reshape(-1) for p in params]), torch.stack(rows).mean(0))
    stats = gp.measure(step=2, batch=12, micro=micro, loss_scale=4.0)
    sq = torch.stack([p.grad.double().pow(2).sum() for p in params]) / 16.0
    assert_close(stats.layer_sq.double(), sq)
    assert stats.local_sq == float(stats.layer_sq.sum())
    assert_close(stats.micro, torch.stack(rows) / 4.0)  # rows unscaled with the loss scale


def test_stats_after_a_synchronisation_forget_the_local_norms():
    s = GradStats(step=0, batch=4, layer_sq=torch.ones(3), local_sq=3.0)
    s.synchronised(torch.zeros(4), collective=False)
    assert s.layer_sq is not None and s.summed is not None
    s.synchronised(None, collective=True)
    assert s.layer_sq is None and s.collective
    assert_close(GradStats.local_vector(torch.tensor([1.0, 2.0]), 4), torch.tensor([1.0, 2.0, 0.25]))


class _CountingComm:
    world_size, rank = 1, 0


def test_stop_agreement_checks_once_per_step_unless_forced():
    stops = StopAgreement(_CountingComm(), None)
    for step in (0, 0, 1, 1, 1):
        stops.check(step)
    assert stops.agreements == 2
    stops.check(1, force=True)
    assert stops.agreements == 3
    off = StopAgreement(_CountingComm(), None, enabled=False)
    off.check(0)
    assert off.agreements == 0


def test_a_worker_with_injected_batches_trains_like_plain_sgd(tmp_path):
    cfg = load_config(None, [f"run.out_dir={tmp_path / 'run'}", "train.steps=6", "train.eval_every=0",
                             "train.batch_size=8", "train.lr=0.1", "train.momentum=0.5", "model.name=mlp"])
    gen = torch.Generator().manual_seed(5)
    fixed = [(torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(6)]
    seen = []

    def batches(step, client):
        seen.append(step)
        return fixed[step]

    worker = build_worker(cfg, Comm(), batches=batches)
    ref = copy.deepcopy(worker.client.model)
    train(worker)
    assert seen == list(range(6))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5)
    for x, y in fixed:
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    for a, b in zip(worker.client.model.parameters(), ref.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
    with h5py.File(tmp_path / "run" / "rank0000.h5", "r") as f:
        assert list(f["steps/batch_size"][:]) == [8] * 6
