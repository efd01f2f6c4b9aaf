"""Data plane under mpiexec: backends, the bucketed exchange, fp16 decisions, refusals."""
from __future__ import annotations

import pytest
import torch

from lbfl_mpi.telemetry import open_rank_file

from ..conftest import SCRIPTS, run_lbfl, run_mpi, tiny_run_args


@pytest.mark.parametrize("n,backend", [(2, "mpi"), (4, "mpi"), (2, "gloo"), (4, "gloo")])
def test_bucketed_overlapped_exchange_equals_one_buffer(n, backend):
    p = run_mpi(n, [str(SCRIPTS / "exchange_reference.py"), "--backend", backend])
    assert f"exchange reference OK: world_size={n} backend={backend}" in p.stdout


@pytest.mark.parametrize("n", [2, 4])
def test_gloo_backend_gives_the_same_final_model_as_mpi(tmp_path, n):
    # BSP (with 16 KiB buckets on both backends), FedAvg, top-k BSP and dynamic batching
    p = run_mpi(n, [str(SCRIPTS / "backend_equivalence.py"), str(tmp_path), "--bucket-mb", "0.015625"],
                timeout=300)
    assert f"backend equivalence OK: world_size={n}" in p.stdout


@pytest.mark.parametrize("bucket_mb", ["0", "0.001"])
def test_fp16_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path, bucket_mb):
    p = run_mpi(2, [str(SCRIPTS / "fp16_skip.py"), str(tmp_path / "run"), "--bucket-mb", bucket_mb])
    assert "fp16 skip OK: world_size=2 step 3 skipped on every rank" in p.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_nccl_without_cuda_exits_2_with_one_line_on_every_rank(tmp_path):
    out = tmp_path / "run"
    p = run_lbfl(tiny_run_args(out, "dist.backend=nccl"), n=2, check=False, timeout=120)
    assert p.returncode == 2, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert len(errors) == 1 and "dist.backend='nccl': no CUDA device on rank(s) 0, 1" in errors[0], p.stderr
    assert not out.exists()


def test_rank_files_record_backend_staging_and_exchange(tmp_path):
    auto, fed = tmp_path / "auto", tmp_path / "fedavg"
    run_lbfl(tiny_run_args(auto, "sync.bucket_mb=0.01"), n=2)
    p = run_lbfl(tiny_run_args(fed, "sync.bucket_mb=0.01", "sync.mode=fedavg", "dist.backend=gloo"), n=2)
    assert "sync.bucket_mb=0.01 ignored" in p.stderr and "sync.mode='fedavg'" in p.stderr
    expect = {auto: ("mpi" if not torch.cuda.is_available() else "nccl", "bucketed"), fed: ("gloo", "dense")}
    for out, (backend, exchange) in expect.items():
        for r in range(2):
            with open_rank_file(out / f"rank{r:04d}.h5") as h:
                assert h.attrs["backend"] == backend and h.attrs["exchange"] == exchange
                assert h.attrs["staging"] == ("host" if h.attrs["device"] == "cpu" else h.attrs["staging"])
                assert h.attrs["precision"] == "fp32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["mpi", "gloo"])
def test_bucketed_exchange_on_cuda_equals_one_buffer(backend):
    # 2 ranks share the GPU: MPI stages each bucket through its own pinned buffer, gloo through its own
    p = run_mpi(2, [str(SCRIPTS / "exchange_reference.py"), "--backend", backend, "--device", "auto"])
    assert "device=cuda" in p.stdout and "staging=pinned-host" in p.stdout
