"""The one-process world without MPI (comm/single.py): when it is chosen, that it answers as MPI's
COMM_SELF does, and that a run on it is bitwise the run on a started MPI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from lbfl_mpi.comm.single import LAUNCHER_MARKERS, SelfComm, launched_world_size, needs_mpi
from lbfl_mpi.config.env import check_environment
from lbfl_mpi.config.fields import ConfigError
from tests.conftest import ROOT, _env


def test_no_marker_no_mpi_and_each_marker_starts_it():
    assert needs_mpi({}) is False
    assert needs_mpi({"HOME": "/root", "SLURM_JOB_ID": "7"}) is False  # a batch shell is not a launcher
    for key in LAUNCHER_MARKERS:
        assert needs_mpi({key: "0"}) is True, key


@pytest.mark.parametrize("value, env, want", [
    ("1", {}, True), (" 1 ", {}, True), ("0", {"PMIX_RANK": "0"}, False), ("auto", {"PMIX_RANK": "0"}, True),
    ("", {}, False), ("AUTO", {}, False)])
def test_lbfl_mpi_overrides_the_markers(value, env, want):
    assert needs_mpi({**env, "LBFL_MPI": value}) is want


def test_launched_world_size_reads_the_launchers_count():
    assert launched_world_size({}) == 0
    assert launched_world_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert launched_world_size({"PMI_SIZE": "x", "SLURM_STEP_NUM_TASKS": "3"}) == 3


@pytest.mark.parametrize("env, fragment", [
    ({"LBFL_MPI": "yes"}, "LBFL_MPI='yes'"),
    ({"LBFL_MPI": "0", "OMPI_COMM_WORLD_SIZE": "4"}, "started 4 ranks")])
def test_bad_lbfl_mpi_is_one_line_naming_it(env, fragment):
    with pytest.raises(ConfigError) as e:
        check_environment(env)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_lbfl_mpi_zero_on_one_launched_rank_is_allowed():
    check_environment({"LBFL_MPI": "0", "OMPI_COMM_WORLD_SIZE": "1"})
    check_environment({"LBFL_MPI": "auto", "OMPI_COMM_WORLD_SIZE": "4"})


def test_self_comm_answers_as_mpi_comm_self():
    """Reference: mpi4py's own COMM_SELF, a started MPI world of one rank."""
    from mpi4py import MPI

    ref, mine = MPI.COMM_SELF, SelfComm()
    assert (mine.Get_rank(), mine.Get_size()) == (ref.Get_rank(), ref.Get_size())
    obj = {"a": [1, 2.5], "b": None}
    assert mine.allgather(obj) == ref.allgather(obj)
    assert mine.bcast(obj, root=0) == ref.bcast(obj, root=0)
    local = np.arange(6, dtype=np.int64)
    want, got = np.empty((1, 6), np.int64), np.empty((1, 6), np.int64)
    ref.Allgather(local, want)
    mine.Allgather(local, got)
    np.testing.assert_array_equal(got, want)
    assert mine.Ibarrier().Test() is True
    assert mine.Split_type(None, key=0).Get_size() == 1
    with pytest.raises(ValueError, match="root 1"):
        mine.bcast(obj, root=1)


def _bare_env(**extra) -> dict:
    env = {k: v for k, v in _env().items() if k not in LAUNCHER_MARKERS and not k.startswith(("OMPI_COMM", "PMIX"))}
    return {**env, **extra}


def test_a_process_without_launcher_never_loads_mpi():
    code = ("import sys; from lbfl_mpi.comm.world import Comm; c = Comm(); "
            "print(c.world_size, c.rank, c.local_size, c.MPI is None, 'mpi4py.MPI' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_bare_env(), capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True).stdout.split()
    assert out == ["1", "0", "1", "True", "False"]
    out = subprocess.run([sys.executable, "-c", code], env=_bare_env(LBFL_MPI="1"), capture_output=True,
                         text=True, cwd=ROOT, timeout=120, check=True).stdout.split()
    assert out == ["1", "0", "1", "False", "True"]


def test_training_without_mpi_is_bitwise_the_run_with_mpi(tmp_path):
    """Reference: the same config on a started MPI singleton (LBFL_MPI=1)."""
    sets = ["--set", "train.steps=12", "--set", "train.eval_every=6", "--set", "train.batch_size=16",
            "--set", "model.name=mlp", "--set", "sync.mode=fedavg", "--set", "sync.period=4"]
    dirs = {}
    for label, choice in (("self", "auto"), ("mpi", "1")):
        dirs[label] = tmp_path / label
        p = subprocess.run([sys.executable, "-m", "lbfl_mpi", "train", "--config", str(ROOT / "jobs/demo.toml"),
                            *sets, "--set", f"run.out_dir={dirs[label]}"], env=_bare_env(LBFL_MPI=choice),
                           capture_output=True, text=True, cwd=ROOT, timeout=240)
        assert p.returncode == 0, p.stderr
    a, b = (json.loads((dirs[k] / "summary.json").read_text()) for k in ("self", "mpi"))
    assert a["final_test_acc"] == b["final_test_acc"] and a["world_size"] == b["world_size"] == 1
    with h5py.File(dirs["self"] / "rank0000.h5") as fa, h5py.File(dirs["mpi"] / "rank0000.h5") as fb:
        torch.testing.assert_close(torch.from_numpy(fa["steps/loss"][:]), torch.from_numpy(fb["steps/loss"][:]),
                                   rtol=0, atol=0)
        torch.testing.assert_close(torch.from_numpy(fa["eval/test_loss"][:]), torch.from_numpy(fb["eval/test_loss"][:]),
                                   rtol=0, atol=0)
    assert os.path.exists(dirs["self"] / "config.toml")
