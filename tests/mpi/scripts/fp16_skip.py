"""Under mpiexec -n N: with train.precision = fp16 under BSP, an inf injected into one rank's gradient
makes every rank skip the same step and halve the same loss scale.

The real trainer runs a few steps; at step 3 rank N-1's batch holds an inf, so its gradients overflow
during backward (where the bucketed exchange already packs them).
Reference: a skipped step leaves the parameters exactly as they were before it (compared with
torch.testing.assert_close at zero tolerance), every other step changes them, and every rank ends
with identical parameters and the same loss scale, half the initial one.

    mpiexec -n N python fp16_skip.py OUT_DIR [--bucket-mb MB]
"""
import argparse

import torch
from torch.testing import assert_close

from lbfl_mpi.comm.world import Comm, abort_on_error
from lbfl_mpi.config import load_config
from lbfl_mpi.telemetry import open_rank_file, read_group
from lbfl_mpi.train import build_worker, train

p = argparse.ArgumentParser()
p.add_argument("out_dir")
p.add_argument("--bucket-mb", default="0")
args = p.parse_args()
BAD_STEP, STEPS = 3, 6

comm = Comm()
with abort_on_error(comm):
    cfg = load_config(None, [f"run.out_dir={args.out_dir}", f"train.steps={STEPS}", "train.eval_every=0",
                             "train.batch_size=8", "train.precision=fp16", f"sync.bucket_mb={args.bucket_mb}"])
    befores = []  # the parameters at the start of every step, taken by the batch source

    def flat(client):
        return torch.cat([q.detach().reshape(-1) for q in client.model.parameters()]).clone()

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
    with open_rank_file(f"{args.out_dir}/rank{comm.rank:04d}.h5") as h:
        factors = read_group(h, "steps")["scale_factor"]
    assert factors[BAD_STEP] == 0 and (factors[:BAD_STEP] == 1).all(), factors
    if comm.rank == 0:
        print(f"fp16 skip OK: world_size={comm.world_size} step {BAD_STEP} skipped on every rank, "
              f"scale {init_scale:g} -> {scaler.scale:g}")
