"""The same training run over each data plane gives the same final model on every rank.

For each case (BSP with 16 KiB buckets, FedAvg, top-k compressed BSP, dynamic batching) the real
trainer runs once with ``dist.backend = mpi`` and once with ``dist.backend = gloo`` (a torch.distributed
process group bootstrapped over MPI), each on a Comm of its own, from the same seed; the final
parameters and buffers must match (torch.testing.assert_close). Dynamic batching re-allocates from
measured throughput, so the throughput is made deterministic here (busy time = b x a per-rank factor):
both runs then get the same allocations, which travel through each backend's allgather.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import pytest
from torch.testing import assert_close

from lbfl_mpi.batching.dynamic import DynamicBatcher
from lbfl_mpi.config import load_config
from lbfl_mpi.train import build_worker
from lbfl_mpi.train import train as train_worker

CASES = {
    "bsp": ["train.momentum=0.9", "sync.bucket_mb=0.015625"],
    "fedavg": ["sync.mode=fedavg", "sync.period=3"],
    "topk_bsp": ["compress.method=topk", "compress.density=0.05", "compress.selection=sampled"],
    "dynamic": ["batching.mode=dynamic", "batching.interval=2", "batching.deadband=0.05", "batching.min_batch=2"],
}


def run(new_comm, out_dir, case: str, backend: str):
    """(final state dict, the loader's last batch size) of a 9-step run."""
    comm = new_comm()  # its own data plane: starting gloo replaces a Comm's plane for good
    cfg = load_config(None, [f"run.out_dir={out_dir}/{case}_{backend}", "train.steps=9", "train.eval_every=0",
                             "train.batch_size=8", "train.lr=0.1", f"dist.backend={backend}", *CASES[case]])
    worker = build_worker(cfg, comm)
    assert worker.backend == backend
    train_worker(worker)
    state = {k: v.detach().clone() for k, v in worker.client.model.state_dict().items()}
    return state, worker.client.loader.batch_size


@pytest.mark.parametrize("case", list(CASES))
def test_gloo_gives_the_same_final_model_as_mpi(comm, new_comm, shared_dir, monkeypatch, deterministic, case):
    observe = DynamicBatcher.observe

    def deterministic_observe(self, samples, busy_seconds):
        observe(self, samples, samples * 1e-3 * (1 + comm.rank))  # rank r is (1 + r) times slower

    monkeypatch.setattr(DynamicBatcher, "observe", deterministic_observe)
    a, size_a = run(new_comm, shared_dir, case, "mpi")
    b, size_b = run(new_comm, shared_dir, case, "gloo")
    assert size_a == size_b, (case, size_a, size_b)
    for k in a:
        assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{case} {k}: {m}")
    if case == "dynamic" and comm.world_size > 1:
        sizes = comm.allgather_obj(size_a)
        assert len(set(sizes)) > 1, f"dynamic batching never re-allocated: {sizes}"
