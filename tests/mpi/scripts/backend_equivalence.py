"""Under mpiexec -n N: the same training run over each data plane gives the same final model.

For each case (BSP, FedAvg, top-k compressed BSP, dynamic batching) the real trainer runs once with
``dist.backend = mpi`` and once with ``dist.backend = gloo`` (a torch.distributed process group
bootstrapped over MPI) in this process, from the same seed; the final parameters and buffers must
match (torch.testing.assert_close). Dynamic batching re-allocates from measured throughput, so the
throughput is made deterministic here (busy time = b x a per-rank factor): both runs then get the
same allocations, which travel through each backend's allgather.

    mpiexec -n N python backend_equivalence.py OUT_DIR [--bucket-mb MB]
"""
import argparse

import torch
from torch.testing import assert_close

from lbfl_mpi.batching.dynamic import DynamicBatcher
from lbfl_mpi.comm.world import Comm, abort_on_error
from lbfl_mpi.config import load_config
from lbfl_mpi.train import build_worker
from lbfl_mpi.train import train as train_worker

p = argparse.ArgumentParser()
p.add_argument("out_dir")
p.add_argument("--bucket-mb", default="0")
args = p.parse_args()

CASES = {
    "bsp": ["train.momentum=0.9", f"sync.bucket_mb={args.bucket_mb}"],
    "fedavg": ["sync.mode=fedavg", "sync.period=3"],
    "topk_bsp": ["compress.method=topk", "compress.density=0.05", "compress.selection=sampled"],
    "dynamic": ["batching.mode=dynamic", "batching.interval=2", "batching.deadband=0.05", "batching.min_batch=2"],
}
_observe = DynamicBatcher.observe


def deterministic_observe(self, samples, busy_seconds):
    _observe(self, samples, samples * 1e-3 * (1 + comm.rank))  # rank r is (1 + r) times slower


def train(case: str, backend: str) -> dict:
    cfg = load_config(None, [f"run.out_dir={args.out_dir}/{case}_{backend}", "train.steps=9", "train.eval_every=0",
                             "train.batch_size=8", "train.lr=0.1", f"dist.backend={backend}", *CASES[case]])
    worker = build_worker(cfg, comm)
    assert worker.backend == backend
    train_worker(worker)
    sizes = worker.client.loader.batch_size
    return {k: v.detach().clone() for k, v in worker.client.model.state_dict().items()}, sizes


comm = Comm()
DynamicBatcher.observe = deterministic_observe
torch.use_deterministic_algorithms(True)
with abort_on_error(comm):
    results = {}
    for backend in ("mpi", "gloo"):  # all MPI runs first: the process group, once made, stays
        for case in CASES:
            results[case, backend] = train(case, backend)
    for case in CASES:
        (a, sa), (b, sb) = results[case, "mpi"], results[case, "gloo"]
        assert sa == sb, (case, sa, sb)
        for k in a:
            assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, case=case, k=k: f"{case} {k}: {m}")
    sizes = comm.allgather_obj(results["dynamic", "mpi"][1])
    assert len(set(sizes)) > 1, f"dynamic batching never re-allocated: {sizes}"
    if comm.rank == 0:
        print(f"backend equivalence OK: world_size={comm.world_size} cases={list(CASES)} dynamic sizes={sizes}")
