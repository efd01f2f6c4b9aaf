"""`lbfl train` with teacher v2 (scaling.teacher_noise = diagonal, whose per-coordinate variance is an
EMA carried across steps, and fisher): a run killed after a checkpoint and resumed is the
uninterrupted run bit for bit, losses, injected noise and final model (the reference: the same run
without the kill)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import kill_after_checkpoint, run_lbfl, tiny_run_args


def _steps(out):
    with open_rank_file(out / "rank0000.h5") as f:
        return read_group(f, "steps")


@pytest.mark.parametrize("noise", ["diagonal", "fisher"])
def test_a_killed_teacher_v2_run_resumes_bit_for_bit(tmp_path, noise):
    opts = ("scaling.method='teacher'", f"scaling.teacher_noise='{noise}'", "scaling.small_batch=4",
            "scaling.noise_small_batch=2", "train.batch_size=16", "train.steps=12", "run.checkpoint_every=3",
            "telemetry.flush_every=1", "hetero.slowdown=[6.0]")  # slower steps: time to kill it
    full, part = tmp_path / "full", tmp_path / "part"
    run_lbfl(tiny_run_args(full, *opts))
    kill_after_checkpoint(tiny_run_args(part, *opts), part, 6)
    run_lbfl(tiny_run_args(part, *opts, "run.resume=true"))
    a, b = _steps(full), _steps(part)
    np.testing.assert_array_equal(b["step"], a["step"])
    assert np.all(np.asarray(a["teacher_noise_sq"])[1:] > 0)  # noise was injected, so the check means something
    for k in ("loss", "teacher_noise_sq", "grad_norm_sq"):
        assert_close(torch.from_numpy(np.asarray(b[k])), torch.from_numpy(np.asarray(a[k])), rtol=0, atol=0)
    assert_close(torch.load(part / "model.pt", weights_only=True), torch.load(full / "model.pt", weights_only=True),
                 rtol=0, atol=0)
    assert len(a["step"]) == 12 and json.loads((part / "summary.json").read_text())["outcome"] == "completed"
