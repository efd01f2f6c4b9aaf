"""A training run with dynamic batching equals one-process SGD on the union of the ranks' batches, step
by step.

The real trainer runs BSP with ``batching.mode = dynamic`` and the last rank emulated 3x slower, so
batch sizes change mid-run. Every rank records the batches its loader handed out and the parameters at
the start of every step; the batches are gathered, and for every step one plain SGD step on the
concatenation of all ranks' batches, from the parameters that step started with, must give the
parameters the next step starts with (the last: the final model): that is what the b_i / sum(b)
weighted gradient average must equal. Every rank ends with identical parameters. Needs 2 ranks or
more (skipped on one).

The comparison restarts from the trainer's parameters at every step: a 12-step replay from the initial
model alone amplifies the per-step rounding (~3e-8) beyond the tolerance for some of the (timing
dependent) batch allocations.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.testing import assert_close

from lbfl_mpi.config import load_config
from lbfl_mpi.train import build_worker, train

from ._world import SIZE

STEPS, GLOBAL_BATCH = 12, 64


@pytest.mark.skipif(SIZE < 2, reason="dynamic batching re-allocates between 2 ranks or more")
def test_dynamic_batching_run_equals_weighted_single_process_reference(comm, shared_dir, deterministic):
    W = comm.world_size
    slowdown = [1] * (W - 1) + [3]
    cfg = load_config(None, [
        f"run.out_dir={shared_dir}", "model.name=cnn", f"train.steps={STEPS}", "train.eval_every=0",
        "train.lr=0.1", "train.batch_size=16", "batching.mode=dynamic", f"batching.global_batch={GLOBAL_BATCH}",
        "batching.interval=3", "batching.deadband=0.05", "batching.min_batch=2", f"hetero.slowdown={slowdown}",
    ])
    seen, starts = [], []

    def recording_batches(step, client):  # the loader's real batches and the parameters they meet
        starts.append(parameters_to_vector(client.model.parameters()).detach().clone())
        x, y = client.loader.next_batch()
        seen.append((x.clone(), y.clone()))
        return x, y

    worker = build_worker(cfg, comm, batches=recording_batches)
    ref = copy.deepcopy(worker.client.model)
    train(worker)
    final = parameters_to_vector(worker.client.model.parameters()).detach().clone()
    batches = comm.allgather_obj(seen)  # [rank][step] -> (x, y)
    sizes = [[len(batches[r][s][1]) for r in range(W)] for s in range(STEPS)]
    assert all(sum(row) == GLOBAL_BATCH for row in sizes), sizes
    assert len({tuple(row) for row in sizes}) > 1, f"batch sizes never changed: {sizes}"
    assert len(starts) == STEPS
    ends = starts[1:] + [final]
    for s in range(STEPS):
        vector_to_parameters(starts[s], ref.parameters())
        x = torch.cat([batches[r][s][0] for r in range(W)])
        y = torch.cat([batches[r][s][1] for r in range(W)])
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
        assert_close(ends[s], parameters_to_vector(ref.parameters()).detach(), rtol=1e-5, atol=1e-6,
                     msg=lambda m, s=s: f"step {s}, sizes {sizes[s]}: {m}")
    everyone = comm.allgather_array(final.numpy())
    for r in range(W):  # every rank holds the same model
        assert_close(torch.from_numpy(everyone[r]), final, rtol=0, atol=0)
