"""The suite's fork server (tests/warm.py) against a fresh interpreter, the reference: the same run gives
the same files bit for bit, the same exit codes and the same lines (times aside)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import ROOT, _env, _warm, tiny_run_args

_TIMES = re.compile(r"\d+(\.\d+)?")


def _fresh(args, timeout=240):
    return subprocess.run([sys.executable, "-m", "lbfl_mpi", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _lines(text: str) -> list[str]:
    return [_TIMES.sub("N", ln) for ln in text.splitlines()]


def test_a_run_forked_warm_is_the_run_of_a_fresh_interpreter(tmp_path):
    warm = _warm().run(tiny_run_args(tmp_path / "warm"), _env(), ROOT, 240)
    fresh = _fresh(tiny_run_args(tmp_path / "fresh"))
    assert warm.returncode == fresh.returncode == 0, warm.stderr + fresh.stderr
    assert _lines(warm.stdout.replace("/warm", "/fresh")) == _lines(fresh.stdout)
    assert _lines(warm.stderr.replace("/warm", "/fresh")) == _lines(fresh.stderr)
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("warm", "fresh"))
    keys = ("final_test_acc", "best_test_acc", "steps")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    with h5py.File(tmp_path / "warm" / "rank0000.h5") as a, h5py.File(tmp_path / "fresh" / "rank0000.h5") as b:
        for col in ("steps/loss", "steps/batch_size", "eval/test_loss", "eval/test_acc"):
            np.testing.assert_array_equal(a[col][:], b[col][:])
    assert (tmp_path / "warm" / "model.pt").read_bytes() != b""


@pytest.mark.parametrize("args", [["train", "--set", "train.lr=abc"], ["analyze", "/nonexistent/run"],
                                  ["config", "--toml"]])
def test_exit_codes_and_output_match_a_fresh_interpreter(args):
    warm, fresh = _warm().run(args, _env(), ROOT, 120), _fresh(args)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


def test_a_run_past_its_timeout_is_killed():
    with pytest.raises(subprocess.TimeoutExpired):
        _warm().run(["train", "--set", "train.steps=100000", "--set", "run.out_dir=/tmp/lbfl-warm-timeout",
                     "--set", "run.overwrite=true"], _env(), ROOT, 3)
