"""Multi-rank tests: pytest launches mpiexec itself (-n 2, and -n 4 --oversubscribe)."""
from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.telemetry import STEP_COLUMNS, open_rank_file, read_group

from ..conftest import SCRIPTS, run_lbfl, run_mpi, tiny_run_args


def test_exception_on_one_rank_ends_the_job(tmp_path):
    t0 = time.monotonic()
    p = run_mpi(2, [str(SCRIPTS / "fault.py"), *tiny_run_args(tmp_path / "run")], timeout=60, check=False)
    elapsed = time.monotonic() - t0
    assert p.returncode != 0
    assert elapsed < 30, f"job took {elapsed:.1f} s to end"
    assert "injected failure on rank 1" in p.stderr


@pytest.mark.parametrize("bad,named", [
    (["train.lr=0"], "train.lr"),                               # rejected before MPI starts
    (["sync.period=0"], "sync.period"),
    (["run.world_size=3"], "run.world_size"),                   # rejected after MPI starts
    (["data.name='cifar10'", "data.root='{missing}'"], "data.root"),
])
def test_bad_input_under_mpi_exits_2_and_writes_nothing(tmp_path, bad, named):
    out = tmp_path / "run"
    extra = [b.format(missing=tmp_path / "no_data") for b in bad]
    p = run_lbfl(tiny_run_args(out, *extra), n=2, check=False, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert len(errors) == 1, p.stderr
    assert named in errors[0]
    assert not out.exists()


def test_four_rank_run_writes_contract_files(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "sync.mode='fedavg'", "sync.period=5", "run.checkpoint_every=12"), n=4)
    files = sorted(out.glob("rank*.h5"))
    assert [f.name for f in files] == [f"rank{r:04d}.h5" for r in range(4)]
    lengths = set()
    for r, f in enumerate(files):
        with open_rank_file(f) as h:
            assert {"rank", "world_size", "config_json", "hostname", "device", "versions"} <= set(h.attrs)
            assert int(h.attrs["rank"]) == r and int(h.attrs["world_size"]) == 4
            steps = read_group(h, "steps")
            assert set(STEP_COLUMNS) <= set(steps)
            lengths |= {len(v) for v in steps.values()}
            np.testing.assert_array_equal(steps["step"], np.arange(12))
            # FedAvg with H=5 averages after steps 4 and 9; steps 10 and 11 stay local
            np.testing.assert_array_equal(np.flatnonzero(steps["synced"]), [4, 9])
            assert (steps["bytes_sent"][[4, 9]] > 0).all() and steps["bytes_sent"].sum() == 2 * steps["bytes_sent"][4]
            phases = steps["t_data"] + steps["t_compute"] + steps["t_straggle"] + steps["t_compress"] + steps["t_sync"]
            np.testing.assert_allclose(steps["t_step"], phases, rtol=1e-9)
            assert set(read_group(h, "eval")["step"]) == {5, 11}
    assert lengths == {12}
    assert (out / "summary.json").exists() and (out / "config.toml").exists()
    # model.pt is the global model: the average of the four local models after the last (local) step
    local = [torch.load(out / "checkpoints" / "step_00000012" / f"rank{r:04d}.pt", weights_only=False)["model"]
             for r in range(4)]
    final = torch.load(out / "model.pt")
    first = next(iter(final))
    assert not torch.equal(local[0][first], local[1][first])  # the local models really differ
    for k, v in final.items():
        assert_close(v, sum(m[k] for m in local) / 4, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cut,common", [
    # FedAvg phase of post-local SGD: averages after steps 7 and 11, so the checkpoint at 10 holds a
    # non-zero residual, the anchor of step 7 and 3 steps of samples since the last average
    (10, ["sync.mode='postlocal'", "sync.switch_step=4", "sync.period=4", "train.momentum=0.9",
          "compress.method=topk", "compress.density=0.05", "compress.selection=sampled"]),
    # compressed BSP with the teacher, one run for both: the gradient residual and the sampler's generator,
    # and the teacher's weights, Adam state, sigma^2 EMA, schedule and the EWMA detector and noise-scale
    # EMAs are in the checkpoint; pretraining runs on the fresh start only (the resumed segment takes the
    # teacher from the checkpoint)
    (6, ["train.momentum=0.9", "compress.method=topk", "compress.density=0.05", "compress.selection=sampled",
         "scaling.method=teacher", "scaling.small_batch=4", "scaling.teacher_steps=3", "scaling.ewma=0.5",
         "scaling.teacher_refresh=8", "scaling.teacher_pretrain_steps=2"]),
])
def test_two_rank_resume_continues_identically(tmp_path, cut, common):
    common = [*common, f"run.checkpoint_every={cut}"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_lbfl(tiny_run_args(full, *common), n=2)
    run_lbfl(tiny_run_args(part, *common, f"train.steps={cut}"), n=2)
    run_lbfl(tiny_run_args(part, *common, "run.resume=true"), n=2)
    for r in range(2):
        with h5py.File(full / f"rank{r:04d}.h5") as a, h5py.File(part / f"rank{r:04d}.h5") as b:
            assert_close(torch.from_numpy(b["steps/loss"][:]), torch.from_numpy(a["steps/loss"][:]), rtol=0, atol=0)
            np.testing.assert_array_equal(b["steps/step"][:], np.arange(12))
    final_a, final_b = torch.load(full / "model.pt"), torch.load(part / "model.pt")
    for k, v in final_a.items():
        assert_close(final_b[k], v, rtol=0, atol=0)


def test_topk_run_logs_compression_telemetry(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "compress.method=topk", "compress.density=0.01", "compress.warmup_steps=2"), n=2)
    with open_rank_file(out / "rank0000.h5") as h:
        steps = read_group(h, "steps")
        dense = int(h.attrs["dense_bytes"])
    from lbfl_mpi.models import build_model

    params = [p for p in build_model("cnn", (1, 8, 8), 10).parameters()]
    n = sum(p.numel() for p in params)  # flat gradient entries
    assert dense == 4 * (n + len(params) + 1 + 1)  # + per-layer statistics and 1/b, + the weight slot
    k = round(0.01 * n)
    np.testing.assert_array_equal(steps["bytes_sent"][:2], [dense, dense])       # dense warm-up
    np.testing.assert_array_equal(steps["bytes_sent"][2:], 16 + 8 * k)
    np.testing.assert_allclose(steps["density_actual"], [1.0, 1.0] + [k / n] * 10)
    assert (steps["residual_norm_sq"][:2] == 0).all() and (steps["residual_norm_sq"][2:] > 0).all()
    assert (steps["t_compress"][2:] > 0).all()
    rec = json.loads(run_lbfl(["analyze", str(out), "--json"]).stdout)[0]["ranks"][0]
    assert rec["dense_bytes"] == dense
    assert rec["bytes_per_sync"] == float(np.mean(steps["bytes_sent"]))
    assert rec["mean_t_compress"] == float(np.mean(steps["t_compress"]))


def test_dynamic_batching_follows_throughput_without_desynchronising(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "batching.mode=dynamic", "batching.global_batch=64", "batching.interval=3",
                           "batching.deadband=0.05", "batching.min_batch=2", "hetero.slowdown=[1, 1, 1, 3]",
                           "train.steps=15"), n=4)
    cols = []
    for r in range(4):
        with open_rank_file(out / f"rank{r:04d}.h5") as h:
            cols.append(read_group(h, "steps"))
    sizes = np.stack([c["batch_size"] for c in cols])                      # [rank, step]
    np.testing.assert_array_equal(sizes.sum(0), 64)                         # global batch kept every step
    np.testing.assert_array_equal(sizes[:, :3], 16)                         # equal split before the first re-allocation
    assert sizes[3, -1] < sizes[0, -1]                                      # the 3x slower rank gets less
    assert all((c["step"] == np.arange(15)).all() for c in cols)
    assert (cols[3]["t_straggle"] > 0).all() and (cols[0]["t_straggle"] == 0).all()  # 0 without a slowdown
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_batch_sizes"] == sizes[:, -1].tolist() and summary["batch_changes"] >= 1


def _planned_budget_gb(batch: int) -> float:
    """Memory budget (GB) at which the cnn-on-digits memory model allows exactly ``batch`` samples."""
    (plan,) = json.loads(run_lbfl(["plan", "--probes", "1,2,4", "--holdout", "3", "--json"]).stdout)
    per_sample = plan["act_bytes_per_sample"] + plan["batch_bytes_per_sample"]
    at_1 = plan["rows"][0]["mem_predicted"]
    return (at_1 + (batch - 1 + 0.5) * per_sample) / 1e9


def test_plan_at_start_is_stored_and_caps_dynamic_batches(tmp_path):
    out = tmp_path / "run"
    budget = _planned_budget_gb(40)
    run_lbfl(tiny_run_args(out, "batching.mode=dynamic", "batching.global_batch=64", "batching.interval=3",
                           "batching.deadband=0.05", "hetero.slowdown=[3, 1]", "batching.plan_at_start=true",
                           "batching.plan_probes=[1, 2, 4]", f"batching.memory_budget_gb={budget!r}",
                           "train.steps=15"), n=2)
    sizes = []
    for r in range(2):
        with open_rank_file(out / f"rank{r:04d}.h5") as h:
            g = h["plan"]
            assert g.attrs["max_batch"] == 40 and g.attrs["rank"] == r
            np.testing.assert_array_equal(g["batch"][:], [1, 2, 4])
            plan = json.loads(g.attrs["json"])
            assert_close(g["mem_predicted"][:], np.asarray([row["mem_predicted"] for row in plan["rows"]]))
            sizes.append(read_group(h, "steps")["batch_size"])
    sizes = np.stack(sizes)
    np.testing.assert_array_equal(sizes.sum(0), 64)
    assert sizes.max() <= 40 and sizes[1, -1] == 40   # the fast rank would take 48; the plan caps it


def test_plan_at_start_refuses_a_budget_that_cannot_hold_the_global_batch(tmp_path):
    budget = _planned_budget_gb(20)
    p = run_lbfl(tiny_run_args(tmp_path / "run", "batching.mode=dynamic", "batching.global_batch=64",
                               "batching.plan_at_start=true", "batching.plan_probes=[1, 2, 4]",
                               f"batching.memory_budget_gb={budget!r}"), n=2, check=False, timeout=120)
    assert p.returncode == 2, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert len(errors) == 1 and "[20, 20]" in errors[0], p.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad,named", [
    (["batching.mode=dynamic", "batching.global_batch=6", "batching.min_batch=4"], "batching.global_batch"),
    (["hetero.slowdown=[1, 2, 3]"], "hetero.slowdown"),
])
def test_bad_batching_values_exit_2(tmp_path, bad, named):
    p = run_lbfl(tiny_run_args(tmp_path / "run", *bad), n=2, check=False, timeout=60)
    assert p.returncode == 2, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert len(errors) == 1 and named in errors[0]
    assert not (tmp_path / "run").exists()
