"""batching.global_mode='adaptive' in a real 2-rank BSP run behind a slow emulated link: the global
batch moves only at the controller's steps, every step's B is the sum of the ranks' batches, the lr
follows B by the linear rule, and a costly synchronisation drives B up (batching/goodput.py: the
optimum grows with t_sync)."""
from __future__ import annotations

import numpy as np

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args

INTERVAL = 4


def test_a_slow_link_drives_the_adaptive_global_batch_up(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "batching.mode='dynamic'", "batching.global_mode='adaptive'",
                           f"batching.interval={INTERVAL}", "batching.global_min=8", "batching.global_max=512",
                           "train.batch_size=16", "train.base_batch=32", "train.scale_lr=true", "train.lr=0.02",
                           "train.warmup_steps=0", "train.steps=24", "hetero.link_latency_ms=[40.0]"), n=2)
    s = []
    for r in range(2):
        with open_rank_file(out / f"rank{r:04d}.h5") as h:
            s.append(read_group(h, "steps"))
    B = np.asarray(s[0]["global_batch"])
    np.testing.assert_array_equal(s[1]["global_batch"], B)
    np.testing.assert_array_equal(B, np.asarray(s[0]["batch_size"]) + np.asarray(s[1]["batch_size"]))
    changed = np.nonzero(np.diff(B))[0] + 1  # first steps at a new B
    assert len(changed) >= 1 and (changed % INTERVAL == 0).all()
    assert B[0] == 32 and B[INTERVAL] > 64 and (B >= 8).all() and (B <= 512).all()  # the first choice: up
    np.testing.assert_allclose(s[0]["lr"], 0.02 * B / 32, rtol=1e-12)
    g = np.asarray(s[0]["goodput"])
    assert np.isnan(g[:INTERVAL]).all() and np.isfinite(g[INTERVAL:]).all()
    np.testing.assert_array_equal(s[0]["micro_batches"], 1)
    plots = tmp_path / "plots"
    p = run_lbfl(["analyze", str(out), "--plots", str(plots)])
    assert (plots / "adaptive_batch.png").stat().st_size > 0, p.stdout
