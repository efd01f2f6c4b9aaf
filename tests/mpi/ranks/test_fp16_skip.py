"""fp16 under BSP: an inf in one rank's gradient makes every rank skip the same step and halve the same
loss scale.

The real trainer runs 6 steps; at step 3 the last rank's batch holds an inf, so its gradients overflow
during backward (where the bucketed exchange, when buckets are on, already packs them). Reference: the
skipped step leaves the parameters exactly as they were before it (assert_close at zero tolerance),
every other step changes them, and every rank ends with identical parameters and the same loss
scale, half the initial one; the rank file records a scale factor of 0 at the skipped step.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.config import load_config
from lbfl_mpi.telemetry import open_rank_file, read_group
from lbfl_mpi.train import build_worker, train

BAD_STEP, STEPS = 3, 6


def flat(client) -> torch.Tensor:
    return torch.cat([q.detach().reshape(-1) for q in client.model.parameters()]).clone()


@pytest.mark.parametrize("bucket_mb", ["0", "0.001"])
def test_fp16_overflow_on_one_rank_skips_the_step_on_every_rank(comm, shared_dir, bucket_mb):
    cfg = load_config(None, [f"run.out_dir={shared_dir}", f"train.steps={STEPS}", "train.eval_every=0",
                             "train.batch_size=8", "train.precision=fp16", f"sync.bucket_mb={bucket_mb}"])
    befores = []  # the parameters at the start of every step, taken by the batch source

    def injecting_batches(step, client):
        befores.append(flat(client))
        x, y = client.loader.next_batch()
        if step == BAD_STEP and comm.rank == comm.world_size - 1:
            x = x.clone()
            x.view(-1)[0] = float("inf")
        return x, y

    worker = build_worker(cfg, comm, batches=injecting_batches)
    scaler = worker.client.scaler
    init_scale = scaler.scale
    train(worker)
    snapshots = list(zip(befores, befores[1:] + [flat(worker.client)]))
    assert len(snapshots) == STEPS
    for step, (before, after) in enumerate(snapshots):
        if step == BAD_STEP:
            assert_close(after, before, rtol=0, atol=0)
        else:
            assert not torch.equal(after, before), f"step {step} changed nothing"
    assert scaler.scale == init_scale / 2, (scaler.scale, init_scale)
    everyone = comm.allgather_obj((flat(worker.client), scaler.scale))
    for params, scale in everyone:
        assert_close(params, everyone[0][0], rtol=0, atol=0)
        assert scale == everyone[0][1]
    with open_rank_file(shared_dir / f"rank{comm.rank:04d}.h5") as h:
        factors = read_group(h, "steps")["scale_factor"]
    assert factors[BAD_STEP] == 0 and (factors[:BAD_STEP] == 1).all(), factors
