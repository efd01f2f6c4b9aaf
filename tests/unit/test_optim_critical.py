import math

import pytest
import torch

from lbfl_mpi.config import load_config
from lbfl_mpi.optim import lr_at
from lbfl_mpi.scaling.critical import GradChange, grad_change, grad_sq_norm


def test_linear_scaling_warmup_and_cosine():
    tc = load_config(None, ["train.lr=0.1", "train.scale_lr=true", "train.base_batch=32", "train.warmup_steps=4",
                            "train.schedule=cosine", "train.steps=14"]).train
    base = 0.1 * 128 / 32
    assert lr_at(tc, 0, 128) == pytest.approx(base / 4)
    assert lr_at(tc, 3, 128) == pytest.approx(base)
    assert lr_at(tc, 9, 128) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lr_at(tc, 14, 128) == pytest.approx(0.0, abs=1e-12)
    const = load_config(None, ["train.lr=0.1"]).train
    assert lr_at(const, 50, 4096) == 0.1


def test_eq8_closed_form():
    assert grad_change(4.0, 5.0) == pytest.approx(0.25)
    assert grad_change(4.0, 1.0) == pytest.approx(0.75)
    assert grad_change(0.0, 0.0) == 0.0 and grad_change(0.0, 1.0) == math.inf
    gc = GradChange()
    assert [gc.update(v) for v in (2.0, 3.0, 1.5)] == pytest.approx([0.0, 0.5, 0.5])


def test_grad_sq_norm_sums_layers_in_float64():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    c = torch.nn.Parameter(torch.zeros(1))  # no gradient: counts as zero
    a.grad = torch.tensor([1.0, 2.0, 3.0])
    b.grad = torch.full((2, 2), 0.5)
    assert grad_sq_norm([a, b, c]) == pytest.approx(14.0 + 1.0)
