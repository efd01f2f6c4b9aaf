"""CUDA paths (marked ``gpu``; skipped without a CUDA device). ``make gpu-check`` runs them.

Each compares the CUDA result with a host reference: pinned staging against the tensor it stages, the
CUDA sparse exchange against the same exchange on CPU, bf16 and channels_last against fp32, and the
Eq. 3 memory model against ``torch.cuda.max_memory_allocated``. The 1-rank
``dist.backend=nccl`` CLI run: tests/integration/test_gpu_nccl.py.
"""
import copy

import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.comm.mpi_plane import MPIPlane
from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import load_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def comm():
    c = Comm()
    c.pick_device()
    return c


def test_pinned_host_staging_round_trip_reuses_one_pinned_buffer():
    # on MPI's COMM_SELF: a process started without a launcher runs on SelfComm, which has no
    # Allreduce (Comm.allreduce_ returns before the plane on one rank), and this test is of the plane
    mpi = pytest.importorskip("mpi4py.MPI")
    comm = Comm(mpi.COMM_SELF)
    comm.pick_device()
    plane = MPIPlane(comm, cuda_aware=False)
    x = torch.randn(1 << 20, device="cuda")
    host, staged = plane._host(x)
    assert staged and host.is_pinned() and host.device.type == "cpu"
    assert_close(host, x.cpu(), rtol=0, atol=0)
    ptr = host.data_ptr()
    assert plane._host(torch.randn(1000, device="cuda"))[0].data_ptr() == ptr  # reused, not reallocated
    y = x.clone()
    plane.allreduce_(y)  # a sum over the one rank of this process: the staged round trip is exact
    torch.cuda.synchronize()
    assert_close(y, x, rtol=0, atol=0)
    work = plane.iallreduce_(y, slot="bucket0")
    work.wait()
    torch.cuda.synchronize()
    assert_close(y, x, rtol=0, atol=0)
    assert plane.staging(torch.device("cuda")) == "pinned-host"


def test_cuda_sparse_exchange_equals_cpu(comm):
    from lbfl_mpi.exchange import TopKExchange

    ccfg = load_config(None, ["compress.method=topk", "compress.density=0.01"]).compress
    out = {}
    for dev in ("cpu", "cuda"):
        t = [torch.randn(3000, generator=torch.Generator().manual_seed(i)).to(dev) for i in range(3)]
        ex = TopKExchange(comm, t, ccfg, seed=0)
        ex.reduce_(t, 4.0, step=0)
        got = [torch.empty_like(v) for v in t]
        ex.unpack_(got)
        out[dev] = (torch.cat(got).cpu(), ex.compressor.residual.cpu())
    assert_close(out["cuda"][0], out["cpu"][0])
    assert_close(out["cuda"][1], out["cpu"][1])


def _train(tmp_path, *overrides):
    from lbfl_mpi.train import build_worker, train

    name = "_".join(o.split("=")[1] for o in overrides) or "ref"
    cfg = load_config(None, [f"run.out_dir={tmp_path / name}", "train.steps=10", "train.eval_every=0",
                             "train.lr=0.005", "train.batch_size=16", "model.name=resnet18", "data.name=synthetic",
                             "data.synthetic_train=512", *overrides])
    worker = build_worker(cfg, Comm())
    assert worker.device.type == "cuda" and worker.client.loader.device_resident
    train(worker)
    return torch.cat([p.detach().reshape(-1) for p in worker.client.model.parameters()]).cpu()


def test_bf16_and_channels_last_on_cuda_match_fp32(tmp_path):
    # stated tolerances (10 SGD steps of ResNet-18 at lr 0.005 from one seed): bf16 within 2e-2 of fp32
    # per parameter, channels_last within 5e-3 (other kernels for the other layout, so other rounding).
    # At lr 0.05 over 20 steps the trajectory is chaotic (loss 2.3 -> 5): on CPU channels_last alone then
    # moves a parameter by 0.10, and the first GPU check failed this test there. At lr 0.005 over 10
    # steps the CPU differences are 2.8e-3 (bf16) and 1.7e-3 (channels_last); a layout bug moves O(1).
    torch.backends.cudnn.allow_tf32 = False
    ref = _train(tmp_path)
    assert_close(_train(tmp_path, "train.precision=bf16"), ref, rtol=0, atol=2e-2)
    assert_close(_train(tmp_path, "train.channels_last=true"), ref, rtol=0, atol=5e-3)
    assert_close(_train(tmp_path, "train.precision=bf16", "train.channels_last=true"), ref, rtol=0, atol=2e-2)


def test_memory_model_against_cuda_peak_and_planned_batch_fits(comm):
    from lbfl_mpi.models import build_model
    from lbfl_mpi.plan.memory import measure_peak_bytes
    from lbfl_mpi.plan.recommend import plan_rank

    cfg = load_config(None, ["model.name=resnet18", "data.name=synthetic", "train.momentum=0.9"])
    budget = 2e9
    plan = plan_rank(cfg, comm, budget, [1, 2, 4, 8, 16, 32, 64], [24, 48, 96], rounds=1, repeats=1)
    held = [r for r in plan["rows"] if r["held_out"]]
    for r in held:  # the Eq. 3 prediction against the allocator's peak of a real step at that batch
        err = abs(r["mem_predicted"] - r["mem_peak_cuda"]) / r["mem_peak_cuda"]
        assert err < 0.25, (r["batch"], r["mem_predicted"], r["mem_peak_cuda"])
    max_b = plan["max_batch"]
    assert max_b and max_b > 96
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10)
    peak = measure_peak_bytes(copy.deepcopy(model), (3, 32, 32), 10, max_b, torch.device("cuda"))
    assert peak <= budget, (max_b, peak, budget)
