"""train.eval_bn_recompute (train/bn_recompute.py): the evaluation with BatchNorm statistics recomputed
from pooled training samples, against a reference that sets them by hand (a training-mode forward
with momentum 1, whose running statistics are exactly the batch's); the model's own statistics come
back bit for bit; several batches average equally; bad settings are one-line errors."""
from __future__ import annotations

import copy

import h5py
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.data import load_dataset
from lbfl_mpi.data.datasets import TensorData
from lbfl_mpi.data.holdout import probe
from lbfl_mpi.models import build_model
from lbfl_mpi.train import build_worker, train
from lbfl_mpi.train.bn_recompute import batch_norms, recomputed_statistics

from ..conftest import run_lbfl, tiny_run_args


def _set_by_hand(model, x):
    """The reference: every BatchNorm's running statistics = the batch statistics of ``x``."""
    ref = copy.deepcopy(model)
    for m in batch_norms(ref):
        m.reset_running_stats()
        m.momentum = 1.0
    ref.train()
    with torch.no_grad():
        ref(x)
    return ref.eval()


def _trained_bncnn():
    torch.manual_seed(0)
    model = build_model("bncnn", (1, 8, 8), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # statistics away from their initial values
        x = torch.randn(16, 1, 8, 8, generator=g) * 2 + 1
        opt.zero_grad()
        F.cross_entropy(model(x), torch.randint(0, 10, (16,), generator=g)).backward()
        opt.step()
    return model


def test_one_batch_equals_statistics_set_by_hand_and_the_model_comes_back_bit_for_bit():
    model = _trained_bncnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    data = TensorData(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
    ref = _set_by_hand(model, data.x)
    test_x = torch.randn(20, 1, 8, 8, generator=g)
    with recomputed_statistics(model, data, 32, "cpu", lambda x, y: (x, y)):
        for m, r in zip(batch_norms(model), batch_norms(ref)):
            assert_close(m.running_mean, r.running_mean)
            assert_close(m.running_var, r.running_var)
        model.eval()
        assert_close(model(test_x), ref(test_x))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.momentum == 0.1 for m in batch_norms(model))


def test_several_batches_weigh_equally():
    model = _trained_bncnn()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 1, 8, 8, generator=g)
    data = TensorData(x, torch.zeros(48, dtype=torch.int64))
    halves = [_set_by_hand(model, x[i:i + 16]) for i in (0, 16, 32)]
    with recomputed_statistics(model, data, 16, "cpu", lambda x, y: (x, y)):
        for j, m in enumerate(batch_norms(model)):
            parts = [batch_norms(h)[j] for h in halves]
            assert_close(m.running_mean, sum(p.running_mean for p in parts) / 3)
            assert_close(m.running_var, sum(p.running_var for p in parts) / 3)


def test_run_evaluates_with_recomputed_statistics_and_saves_the_trained_ones(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.out_dir={run}", "train.steps=6", "train.eval_every=0", "train.batch_size=16",
                             "model.name=bncnn", "train.eval_bn_recompute=64", "train.eval_batch=64",
                             "telemetry.flush_every=1"])
    train(build_worker(cfg, Comm()))
    with h5py.File(run / "rank0000.h5", "r") as f:
        got = (float(f["eval"]["test_loss"][-1]), float(f["eval"]["test_acc"][-1]))
    b = load_dataset(cfg.data)
    model = build_model("bncnn", b.input_shape, b.num_classes)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))  # saved with its own statistics
    pooled = probe(b.train, 64)
    ref = _set_by_hand(model, pooled.x)
    with torch.no_grad():
        out = ref(b.test.x)
    want = (float(F.cross_entropy(out, b.test.y)), float((out.argmax(1) == b.test.y).double().mean()))
    assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and the saved model's own statistics give another result
        plain = model.eval()(b.test.x)
    assert not torch.allclose(plain, out)


def test_refused_with_ghost_batch_norm():
    with pytest.raises(ConfigError, match="train.eval_bn_recompute=64: not with model.ghost_batch"):
        load_config(None, ["model.name=bncnn", "model.ghost_batch=4", "train.batch_size=8",
                           "train.eval_bn_recompute=64"])


def test_cli_refuses_a_model_without_batch_norm_in_one_line(tmp_path):
    p = run_lbfl(tiny_run_args(tmp_path / "r", "train.eval_bn_recompute=64", "model.name=mlp"), check=False)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    msg = "train.eval_bn_recompute=64: model.name='mlp' with model.norm='default' has no BatchNorm"
    assert len(lines) == 1 and msg in lines[0], p.stderr


def test_cli_too_many_samples_names_the_key(tmp_path):
    p = run_lbfl(tiny_run_args(tmp_path / "r", "model.name=bncnn", "train.eval_bn_recompute=100000"), check=False)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "train.eval_bn_recompute=100000 exceeds the" in lines[0], p.stderr
