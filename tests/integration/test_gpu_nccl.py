"""A 1-rank ``dist.backend=nccl`` run of the CLI (process group formed over the MPI bootstrap) against the
same run on the MPI data plane (marked ``gpu``; skipped without a CUDA device). ``make gpu-check`` runs it.
"""
import json
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_nccl_one_rank_run_forms_its_group_over_mpi_and_matches_the_mpi_plane(tmp_path):
    # With one GPU NCCL cannot be tried on more ranks; on one rank the group still forms through the
    # MPI-broadcast rendezvous, and the allreduce of one rank is the identity, so the final model must
    # equal the dist.backend=mpi run's up to cuDNN's run-to-run rounding.
    from tests.conftest import _env

    models = {}
    for backend in ("mpi", "nccl"):
        out = tmp_path / backend
        args = ["train", "--set", f"run.out_dir={out}", "--set", "train.steps=10", "--set", "train.eval_every=0",
                "--set", "train.batch_size=32", "--set", f"dist.backend={backend}", "--set", "dist.timeout_s=60"]
        p = subprocess.run([sys.executable, "-m", "lbfl_mpi", *args], env=_env(), capture_output=True, text=True,
                           timeout=240)
        assert p.returncode == 0, f"dist.backend={backend} exited {p.returncode}:\n{p.stderr[-3000:]}"
        import h5py

        with h5py.File(out / "rank0000.h5", "r") as h:
            assert h.attrs["backend"] == backend and h.attrs["device"].startswith("cuda")
        assert json.loads((out / "summary.json").read_text())["outcome"] == "completed"
        models[backend] = torch.load(out / "model.pt", map_location="cpu")
    for k, ref in models["mpi"].items():
        if ref.is_floating_point():
            assert_close(models["nccl"][k], ref, rtol=1e-4, atol=1e-5, msg=k)
