"""compress.density_mode='adaptive' in a real 2-rank BSP run: each step sends k(d_t) entries, d_t the
critical density after a critical step by Eq. 8 and the base density elsewhere (compress/density.py),
the same on both ranks."""
from __future__ import annotations

import numpy as np
import torch

from lbfl_mpi.compress.topk import k_for
from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args


def test_adaptive_density_follows_the_previous_steps_phase(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "compress.method='topk'", "compress.density=0.01", "compress.density_critical=0.1",
                           "compress.density_mode='adaptive'", "scaling.threshold=0.05", "train.steps=16"), n=2)
    s = []
    for r in range(2):
        with open_rank_file(out / f"rank{r:04d}.h5") as h:
            s.append(read_group(h, "steps"))
    np.testing.assert_array_equal(s[1]["density_actual"], s[0]["density_actual"])
    np.testing.assert_array_equal(s[1]["phase"], s[0]["phase"])
    n = sum(v.numel() for v in torch.load(out / "model.pt", weights_only=True).values())  # cnn: parameters only
    phase = np.asarray(s[0]["phase"])
    prev = np.concatenate([[0], phase[:-1]])  # step 0 starts outside a critical phase
    want = np.where(prev == 1, k_for(n, 0.1), k_for(n, 0.01)) / n
    np.testing.assert_allclose(s[0]["density_actual"], want, rtol=1e-12)
    assert 0 < prev.sum() < len(prev)  # both densities were used
