"""Teacher v2 (scaling/noise_inject.py) in the real trainer on every rank, against a one-process
float64 reference of what the step must compute.

The trainer runs 3 BSP steps of an MLP with ``scaling.teacher_noise = fisher``; the batch source
records each rank's batch and the parameters before every step. Every rank then rebuilds, for every
rank r: the micro-batch gradients g_rj (b_t = 2, m = 4), the normals z_r of the documented seed
(run.seed, step, rank), xi_r = sqrt(t b_t / (m - 1)) sum_j (z_rj - z_bar_r) g_rj with t = W (1/b_s -
1/B) ((S) at equal batches), and G = mean_r (g_bar_r + xi_r). The parameters after each step must be
w - lr G, the logged ``teacher_noise_sq`` sum_r |xi_r|^2 / W^2, and the logged ``grad_change`` Eq. 8
of the clean |G_B|^2 estimate: |G|^2 - sum_r q_r with more than one rank, the local |g_bar|^2 with one.

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.config import load_config
from lbfl_mpi.telemetry import open_rank_file, read_group
from lbfl_mpi.train import build_worker, train

STEPS, B_LOCAL, B_T, B_S, LR, SEED = 3, 8, 2, 1, 0.5, 11


def _rows(model, x, y) -> torch.Tensor:
    rows = []
    for xs, ys in zip(x.split(B_T), y.split(B_T)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xs), ys).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def _normals(step: int, rank: int, m: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((SEED * 1_000_003 + step) * 4099 + rank + 1)
    return torch.randn(m, generator=g, dtype=torch.float32).double()


def test_fisher_noise_step_matches_a_float64_reference_on_every_rank(comm, shared_dir):
    W = comm.world_size
    cfg = load_config(None, [f"run.out_dir={shared_dir}", f"train.steps={STEPS}", "train.eval_every=0",
                             f"train.batch_size={B_LOCAL}", "model.name=mlp", f"train.lr={LR}", f"run.seed={SEED}",
                             "scaling.method=teacher", "scaling.teacher_noise=fisher",
                             f"scaling.small_batch={B_T}", f"scaling.noise_small_batch={B_S}"])
    seen = []  # (parameters before the step, the step's batch)

    def recording_batches(step, client):
        x, y = client.loader.next_batch()
        seen.append(({k: v.detach().clone() for k, v in client.model.state_dict().items()}, x.clone(), y.clone()))
        return x, y

    worker = build_worker(cfg, comm, batches=recording_batches)
    ref = copy.deepcopy(worker.client.model).double()
    train(worker)
    final = {k: v.detach().clone() for k, v in worker.client.model.state_dict().items()}
    everyone = comm.allgather_obj([(x, y) for _, x, y in seen])
    B = W * B_LOCAL
    t = W * (1.0 / B_S - 1.0 / B)
    with open_rank_file(shared_dir / f"rank{comm.rank:04d}.h5") as h:
        logged = read_group(h, "steps")
    prev_clean = None
    for step in range(STEPS):
        ref.load_state_dict({k: v.double() for k, v in seen[step][0].items()})
        G, q_total, local_sq = 0.0, 0.0, None
        for r in range(W):
            x, y = everyone[r][step]
            rows = _rows(ref, x.double(), y)
            z = _normals(step, r, rows.shape[0])
            xi = ((z - z.mean()) * math.sqrt(t * B_T / (rows.shape[0] - 1))) @ rows
            G = G + (rows.mean(0) + xi) / W
            q_total += float(xi.pow(2).sum()) / W ** 2
            if r == comm.rank:
                local_sq = float(rows.mean(0).pow(2).sum())
        assert_close(float(logged["teacher_noise_sq"][step]), q_total, rtol=2e-4, atol=0)
        clean = float(G.pow(2).sum()) - q_total if W > 1 else local_sq
        if prev_clean is not None:
            assert_close(float(logged["grad_change"][step]), abs(clean - prev_clean) / prev_clean, rtol=2e-3, atol=1e-6)
        prev_clean = clean
        after = seen[step + 1][0] if step + 1 < STEPS else final
        offset = 0
        for name, p in ref.named_parameters():
            n = p.numel()
            want = p.detach() - LR * G[offset:offset + n].view_as(p)
            assert_close(after[name].double(), want, rtol=0, atol=2e-5, msg=f"step {step} {name}")
            # the noise moves the parameters far more than the tolerance
            assert float((LR * xi[offset:offset + n]).abs().max()) > 50 * 2e-5 or n < 20
            offset += n
    assert torch.isfinite(torch.as_tensor(logged["scale_factor"])).all() and (logged["scale_factor"] == 1).all()
