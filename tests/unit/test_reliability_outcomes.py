"""How a run ends when it did not really train, or when a signal comes late, and what the run directory
check refuses before a run starts (train/loop.py, run/stopping.py, run/rundir.py). In-process, one rank,
with injected batches (train/build.py): the reference is the batch stream itself (a NaN batch is a
non-finite loss by construction) and the files as they were.
"""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import load_config
from lbfl_mpi.run import rundir
from lbfl_mpi.run.stopping import NonFiniteStop, NothingApplied, SignalWatch
from lbfl_mpi.train import build_worker, train


def _cfg(out, *extra):
    return load_config(None, [f"run.out_dir={out}", "train.steps=6", "train.eval_every=0", "train.batch_size=8",
                              "model.name=mlp", "train.nonfinite=skip", "telemetry.flush_every=1", *extra])


def _batches(nan_steps):
    gen = torch.Generator().manual_seed(3)
    fixed = [(torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(6)]

    def batches(step, client):
        x, y = fixed[step]
        return (torch.full_like(x, float("nan")) if step in nan_steps else x), y

    return batches


def test_skip_that_drops_one_update_completes(tmp_path):
    run = tmp_path / "run"
    summary = train(build_worker(_cfg(run), Comm(), batches=_batches({2})))
    assert summary["outcome"] == "completed" and summary["nonfinite_skips"] == 1
    model = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in model.values())


def test_skip_that_drops_every_update_is_a_failure_without_model_pt(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NothingApplied) as e:
        train(build_worker(_cfg(run), Comm(), batches=_batches(set(range(6)))))
    assert isinstance(e.value, NonFiniteStop)  # the CLI's exit code 4
    assert str(e.value).startswith("train.nonfinite='skip' dropped all 6 updates of steps 0 to 5 on every rank")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outcome"] == "nonfinite_all_skipped" and summary["nonfinite_skips"] == 6
    assert not (run / "model.pt").exists()


def test_skip_with_a_blown_up_model_stops_and_names_skip_not_stop(tmp_path):
    """lr=1e20: the first update is finite but huge, every later loss is NaN and dropped; the model
    that is left cannot give a finite output. Before: exit 0, "completed", model.pt written."""
    run = tmp_path / "run"
    with pytest.raises(NonFiniteStop) as e:
        train(build_worker(_cfg(run, "train.lr=1e20"), Comm(), batches=_batches(set())))
    msg = str(e.value)
    assert "(train.nonfinite='skip'" in msg and "'stop'" not in msg and "model.pt is not written" in msg
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outcome"] == "nonfinite_stop" and summary["nonfinite"]["quantity"] in ("parameters", "test_loss")
    assert summary["nonfinite_skips"] >= 1 and not (run / "model.pt").exists()


def test_a_signal_after_the_last_step_neither_kills_nor_restores_the_default():
    before = signal.getsignal(signal.SIGUSR1)
    watch = SignalWatch(["SIGUSR1"])
    try:
        watch.step = 5
        watch.finished = True  # what the loop sets once the last step is done
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # a second delivery would have killed us before
        assert watch.received == "SIGUSR1" and watch.received_at == 5
        watch.close()
        assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL  # still caught until the process ends
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, before)


def _meta(run, step, world_size=1):
    d = run / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": step, "world_size": world_size}))


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    _meta(run, 20)
    d = rundir._decide(load_config(None, [f"run.out_dir={run}", "run.resume=auto", "train.steps=5"]), 1)
    assert d.error == (f"run.resume=auto: train.steps=5 is below the checkpoint's step 20 in {str(run)!r}; "
                       "set train.steps >= 20 to continue it, or run.overwrite=true to start again")
    ok = rundir._decide(load_config(None, [f"run.out_dir={run}", "run.resume=auto", "train.steps=20"]), 1)
    assert ok.error is None and ok.resume_steps == [20]


@pytest.mark.parametrize("make,want", [
    (lambda r: (r / "summary.json").mkdir(), "summary.json is a directory, not a file"),
    (lambda r: (r / "model.pt").mkdir(), "model.pt is a directory, not a file"),
    (lambda r: (r / "rank0001.h5").mkdir(), "rank0001.h5 is a directory, not a file"),
    (lambda r: os.mkfifo(r / "config.toml"), "config.toml is a FIFO (named pipe), not a file"),
    (lambda r: (r / "checkpoints").write_text("x"), "checkpoints is a regular file, not a directory"),
    (lambda r: (r / "checkpoints").symlink_to(r.parent), "checkpoints is a symbolic link, not a directory"),
    (lambda r: (r / "checkpoints" / "latest.json").mkdir(parents=True), "checkpoints/latest.json is a directory"),
])
@pytest.mark.parametrize("mode", ["run.overwrite=true", "run.resume=auto"])
def test_a_name_of_the_wrong_kind_is_refused_before_the_run(tmp_path, make, want, mode):
    run = tmp_path / "run"
    run.mkdir()
    make(run)
    d = rundir._decide(load_config(None, [f"run.out_dir={run}", mode]), 1)
    assert d.error is not None and want in d.error and "\n" not in d.error


def test_a_batch_of_2e9_is_refused_when_the_worker_is_built(tmp_path):
    """Before: minutes drawing 1.4 million permutations of the partition for the first batch."""
    from lbfl_mpi.data import DataError

    cfg = load_config(None, [f"run.out_dir={tmp_path / 'run'}", "train.batch_size=2000000000"])
    with pytest.raises(DataError, match=r"^train.batch_size=2000000000 is \d+ passes over rank 0's partition of "
                                        r"\d+ samples in every batch \(at most 65536\)"):
        build_worker(cfg, Comm())
    assert not (tmp_path / "run").exists()
