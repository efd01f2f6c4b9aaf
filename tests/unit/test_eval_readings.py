"""train.eval_train_samples and train.eval_sharpness_iters (scaling/sharpness.py): the Hessian's top
eigenvalue by power iteration against the eigenvalues of the full Hessian, and a run's train_* and
sharpness columns against a plain evaluation of its saved model."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.data import load_dataset
from lbfl_mpi.data.datasets import DataError, train_probe
from lbfl_mpi.models import build_model
from lbfl_mpi.scaling.sharpness import hvp, model_sharpness, top_eigenvalue
from lbfl_mpi.train import build_worker, train


def _problem():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (32,), generator=g)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    return x, y, w


def test_hvp_and_power_iteration_match_the_full_hessian():
    x, y, w = _problem()  # softmax regression: a convex loss, so the top eigenvalue is the largest one

    def loss_of(flat):
        return F.cross_entropy(x @ flat.view(3, 5).T, y)

    H = torch.autograd.functional.hessian(loss_of, w.detach().reshape(-1))
    v = torch.randn(15, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(hvp(lambda: loss_of(w.reshape(-1)), [w], [v.view(3, 5)])[0].reshape(-1), H @ v)
    lam = top_eigenvalue(lambda: loss_of(w.reshape(-1)), [w], iters=300)
    torch.testing.assert_close(lam, float(torch.linalg.eigvalsh(H)[-1]), rtol=1e-6, atol=1e-9)
    assert top_eigenvalue(lambda: loss_of(w.reshape(-1)), [w], iters=1) < lam  # the first iterate is below it


def test_model_sharpness_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                                torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model_sharpness(model, x, y, iters=5) > 0 and model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)


def test_run_logs_train_side_and_sharpness(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.out_dir={run}", "train.steps=6", "train.eval_every=3", "model.name=mlp",
                             "train.eval_train_samples=300", "train.eval_sharpness_iters=20", "train.eval_batch=128"])
    summary = train(build_worker(cfg, Comm()))
    with h5py.File(run / "rank0000.h5", "r") as f:
        ev = {k: f["eval"][k][:] for k in ("train_loss", "train_acc", "sharpness")}
    assert len(ev["train_acc"]) == 2 and np.isfinite(ev["sharpness"]).all()
    b = load_dataset(cfg.data)
    probe = train_probe(b, 300)
    model = build_model("mlp", b.input_shape, b.num_classes)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        out = model(probe.x)
    acc = float((out.argmax(1) == probe.y).double().mean())
    torch.testing.assert_close((ev["train_loss"][-1], ev["train_acc"][-1]), (float(F.cross_entropy(out, probe.y)), acc),
                               rtol=1e-5, atol=1e-6)
    want = model_sharpness(model, probe.x[:128], probe.y[:128], iters=20)
    torch.testing.assert_close(ev["sharpness"][-1], want, rtol=1e-4, atol=1e-6)
    assert summary["final_train_acc"] == ev["train_acc"][-1] and summary["final_sharpness"] == ev["sharpness"][-1]
    # the probe is drawn once: the same samples for another seed
    assert torch.equal(train_probe(load_dataset(load_config(None, ["run.seed=9"]).data), 300).x, probe.x)


def test_bad_readings_are_refused():
    with pytest.raises(ConfigError, match="train.eval_sharpness_iters.*needs train.eval_train_samples > 0"):
        load_config(None, ["train.eval_sharpness_iters=5"])
    with pytest.raises(DataError, match="train.eval_train_samples=5000 exceeds the 1437 training samples"):
        train_probe(load_dataset(load_config(None, []).data), 5000)


def test_analyze_prints_the_readings(tmp_path):
    from lbfl_mpi.analysis.load import read_run
    from lbfl_mpi.analysis.tables import format_run, run_record

    run = tmp_path / "run"
    summary = train(build_worker(load_config(None, [
        f"run.out_dir={run}", "train.steps=4", "train.eval_every=2", "model.name=mlp", "data.val_fraction=0.2",
        "train.eval_train_samples=100", "train.eval_sharpness_iters=3"]), Comm()))
    rec = run_record(read_run(run))
    with h5py.File(run / "rank0000.h5", "r") as f:
        val, tr, sh = (float(f["eval"][c][-1]) for c in ("val_acc", "train_acc", "sharpness"))
    assert (rec["last_val_acc"], rec["last_train_acc"], rec["last_sharpness"]) == (val, tr, sh)
    gap = tr - summary["final_test_acc"]
    line = f"last evaluation: val acc {val:.4f}, train acc {tr:.4f} (train - test {gap:+.4f}), sharpness {sh:.4g}"
    assert line in format_run(rec)
