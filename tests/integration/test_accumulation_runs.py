"""`lbfl train` with train.micro_batch against the same run without it: the model is the one-pass
model (cnn has no BatchNorm), for the one-client path and the federated client layer, and under FedAvg
the accumulated micro-batches give the noise-scale estimate that a one-pass run has no data for."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args


def _model(out):
    return torch.load(out / "model.pt", map_location="cpu", weights_only=True)


# LAMB's trust ratio |w| / |update| (You et al. 2020; lbfl_mpi/optim/lamb.py) amplifies the float32 rounding of a
# different summation order: on an AMD EPYC the accumulated run differs from the one-pass run by up to
# 2.7e-6 (relative 2.7e-5) after 12 steps, where a wrong batch (batch_size 4) differs by 0.07 and
# another seed by 0.65; SGD stays within 1e-6.
@pytest.mark.parametrize("extra,tol", [
    (("sync.mode='fedavg'", "sync.period=4", "train.momentum=0.9"), {"rtol": 1e-5, "atol": 1e-6}),
    (("sync.mode='fedavg'", "sync.period=4", "fl.clients=4", "fl.clients_per_round=2", "train.optimizer='lamb'",
      "train.lr=0.01"), {"rtol": 1e-4, "atol": 1e-5}),
], ids=["one-client", "fl-clients-lamb"])
def test_micro_batches_give_the_one_pass_model(tmp_path, extra, tol):
    run_lbfl(tiny_run_args(tmp_path / "one", *extra))
    run_lbfl(tiny_run_args(tmp_path / "acc", *extra, "train.micro_batch=2"))
    assert_close(_model(tmp_path / "acc"), _model(tmp_path / "one"), **tol)
    with open_rank_file(tmp_path / "one" / "rank0000.h5") as a, open_rank_file(tmp_path / "acc" / "rank0000.h5") as b:
        sa, sb = read_group(a, "steps"), read_group(b, "steps")
    assert_close(sb["loss"], sa["loss"], **tol)
    if "fl.clients=4" not in extra:  # the micro-batch statistics feed the noise scale (scaling/stats.py)
        assert np.isnan(sa["noise_scale"]).all() and np.isfinite(sb["noise_scale"][1:]).all()


def test_a_micro_batch_that_does_not_divide_the_batch_exits_2(tmp_path):
    p = run_lbfl(tiny_run_args(tmp_path / "run", "train.micro_batch=3"), check=False, timeout=60)
    assert p.returncode == 2, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert "train.micro_batch=3" in line and "train.batch_size=8" in line
    assert not (tmp_path / "run").exists()


def test_ghost_batchnorm_is_accumulation_over_micro_batches_of_its_size(tmp_path):
    """bncnn: a batch of 8 in ghost batches of 4 (one forward pass) computes what two accumulated
    micro-batches of 4 compute (each normalised over its own 4 samples, the running statistics updated
    twice), and not what plain BatchNorm over all 8 computes."""
    common = ("model.name='bncnn'", "sync.mode='fedavg'", "sync.period=4", "train.momentum=0.9")
    run_lbfl(tiny_run_args(tmp_path / "ghost", *common, "model.ghost_batch=4"))
    run_lbfl(tiny_run_args(tmp_path / "acc", *common, "train.micro_batch=4"))
    run_lbfl(tiny_run_args(tmp_path / "plain", *common))
    ghost, acc, plain = (_model(tmp_path / d) for d in ("ghost", "acc", "plain"))
    assert_close(ghost, acc, rtol=1e-4, atol=1e-5)
    assert max((ghost[k].float() - plain[k].float()).abs().max() for k in ghost) > 1e-3


def test_ghost_batch_without_batchnorm_exits_2(tmp_path):
    p = run_lbfl(tiny_run_args(tmp_path / "run", "model.ghost_batch=4"), check=False, timeout=60)
    assert p.returncode == 2, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert "model.ghost_batch=4" in line and "no BatchNorm" in line
    assert not (tmp_path / "run").exists()
