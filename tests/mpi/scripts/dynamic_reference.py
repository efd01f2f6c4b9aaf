"""Under mpiexec -n 4: a whole training run with dynamic batching equals single-process SGD.

The real trainer runs BSP with ``batching.mode = dynamic`` and one emulated 3x slower rank, so batch
sizes change mid-run. Every rank records the batches its loader handed out; rank 0 gathers them and
replays plain SGD on the concatenation of all ranks' batches of each step, which is what the
b_i / sum(b) weighted gradient average must equal. Any mismatch raises -> non-zero exit.

    mpiexec -n 4 python dynamic_reference.py OUT_DIR
"""
import copy
import sys

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.comm.world import Comm, abort_on_error
from lbfl_mpi.config import load_config
from lbfl_mpi.train import build_worker, train

STEPS = 12
comm = Comm()
cfg = load_config(None, [
    f"run.out_dir={sys.argv[1]}", "model.name=cnn", "train.steps=12", "train.eval_every=0", "train.lr=0.1",
    "train.batch_size=16", "batching.mode=dynamic", "batching.global_batch=64", "batching.interval=3",
    "batching.deadband=0.05", "batching.min_batch=2", "hetero.slowdown=[1, 1, 1, 3]",
])
torch.use_deterministic_algorithms(True)

with abort_on_error(comm):
    seen = []

    def recording_batches(step, client):  # the loader's real batches, recorded
        x, y = client.loader.next_batch()
        seen.append((x.clone(), y.clone()))
        return x, y

    worker = build_worker(cfg, comm, batches=recording_batches)
    init = copy.deepcopy(worker.client.model)  # rank 0's initial model is the one broadcast to every rank
    train(worker)
    batches = comm.allgather_obj(seen)  # [rank][step] -> (x, y)
    sizes = [[len(batches[r][s][1]) for r in range(comm.world_size)] for s in range(STEPS)]
    assert all(sum(row) == 64 for row in sizes), sizes
    assert len({tuple(row) for row in sizes}) > 1, f"batch sizes never changed: {sizes}"
    final = torch.cat([p.detach().reshape(-1) for p in worker.client.model.parameters()])
    everyone = comm.allgather_array(final.numpy())
    if comm.rank == 0:
        ref = init
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        for s in range(STEPS):
            x = torch.cat([batches[r][s][0] for r in range(comm.world_size)])
            y = torch.cat([batches[r][s][1] for r in range(comm.world_size)])
            opt.zero_grad()
            F.cross_entropy(ref(x), y).backward()
            opt.step()
        expect = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
        for r in range(comm.world_size):  # every rank holds the reference model
            assert_close(torch.from_numpy(everyone[r]), expect, rtol=1e-5, atol=1e-6)
        print(f"dynamic reference OK: sizes per step {sizes}")
