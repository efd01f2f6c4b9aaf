"""Data plane of CLI runs under mpiexec: nccl refused without CUDA, and what the rank files record (backend,
staging, exchange). The exchange, backend-equivalence and fp16 references run in tests/mpi/ranks."""
from __future__ import annotations

import pytest
import torch

from lbfl_mpi.telemetry import open_rank_file

from ..conftest import run_lbfl, tiny_run_args


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
