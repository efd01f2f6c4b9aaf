"""`lbfl train` with scaling.method='adascale' on one rank (micro-batches give the noise scale): the
logged learning rate is r_t lr(tau_t) with r_t from the logged noise scale and tau_t the sum of the
earlier gains, the run ends once tau reaches train.steps, and a run killed and resumed is the
uninterrupted run bit for bit."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import torch
from torch.testing import assert_close

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import kill_after_checkpoint, run_lbfl, tiny_run_args

B, B0, STEPS, LR, WARM = 16, 4, 40, 0.05, 4
OPTS = ("scaling.method='adascale'", "scaling.small_batch=4", f"train.batch_size={B}", f"train.base_batch={B0}",
        f"train.steps={STEPS}", f"train.lr={LR}", f"train.warmup_steps={WARM}", "train.schedule='cosine'",
        "train.momentum=0.9", "scaling.noise_ema=0.5", "telemetry.flush_every=1", "train.eval_every=10")


def _lr_at(tau: float) -> float:
    """The base schedule of optim/schedule.py, written out: linear warm-up, then cosine to train.steps."""
    if tau < WARM:
        return LR * (tau + 1) / WARM
    return LR * 0.5 * (1 + math.cos(math.pi * min(1.0, (tau - WARM) / (STEPS - WARM))))


def _steps(out):
    with open_rank_file(out / "rank0000.h5") as f:
        return read_group(f, "steps")


def test_adascale_lr_is_the_gain_times_the_schedule_at_its_progress(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, *OPTS))
    s = _steps(out)
    gain, lr, noise = (np.asarray(s[k], dtype=np.float64) for k in ("scale_factor", "lr", "noise_scale"))
    n = len(gain)
    # r_t from the logged noise scale B_simple = tr / |G|^2: (B_simple / B0 + 1) / (B_simple / B + 1)
    # (micro-batches give an estimate from the first step; a step whose |G|^2 estimate is <= 0 logs NaN
    # and takes the pure-noise gain S = B / B0)
    known = np.isfinite(noise)
    assert known.sum() >= n - 2
    np.testing.assert_array_equal(gain[~known], B / B0)
    assert_close(torch.from_numpy(gain[known]), torch.from_numpy((noise[known] / B0 + 1) / (noise[known] / B + 1)),
                 rtol=1e-5, atol=0)
    assert (gain >= 1 - 1e-12).all() and (gain <= B / B0 + 1e-9).all() and gain.max() > 1.5
    tau = np.concatenate([[0.0], np.cumsum(gain)[:-1]])
    assert_close(torch.from_numpy(lr), torch.from_numpy(gain * np.array([_lr_at(t) for t in tau])), rtol=1e-5, atol=0)
    # the end: the first step at which the progress reaches train.steps, well before STEPS iterations
    assert tau[-1] < STEPS <= tau[-1] + gain[-1] and n < STEPS
    np.testing.assert_array_equal(s["step"], np.arange(n))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_done"] == n and summary["outcome"] == "completed" and summary["samples"] == n * B
    assert (out / "model.pt").exists()


def test_a_killed_adascale_run_resumes_bit_for_bit(tmp_path):
    opts = (*OPTS, "run.checkpoint_every=3", "hetero.slowdown=[6.0]")  # slower steps: time to kill it
    full, part = tmp_path / "full", tmp_path / "part"
    run_lbfl(tiny_run_args(full, *opts))
    kill_after_checkpoint(tiny_run_args(part, *opts), part, 6)
    run_lbfl(tiny_run_args(part, *opts, "run.resume=true"))
    a, b = SimpleNamespace(**_steps(full)), SimpleNamespace(**_steps(part))
    np.testing.assert_array_equal(b.step, a.step)
    for k in ("loss", "lr", "scale_factor"):
        assert_close(torch.from_numpy(np.asarray(getattr(b, k))), torch.from_numpy(np.asarray(getattr(a, k))),
                     rtol=0, atol=0)
    assert_close(torch.load(part / "model.pt", weights_only=True), torch.load(full / "model.pt", weights_only=True),
                 rtol=0, atol=0)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    assert sb["steps_done"] == sa["steps_done"] < STEPS
