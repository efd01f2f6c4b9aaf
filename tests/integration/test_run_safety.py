"""Run-directory safety, single process (run/rundir.py, run/checkpoint.py, files.py, run/stopping.py).

Each test states the failure it guards against: code execution from a checkpoint, deleting files
lbfl did not write, writing through planted links, two jobs in one directory, resuming a damaged or
changed run, training on after a non-finite loss. References: a plain unpickle (it would run the
payload), an uninterrupted run (bitwise), the files as they were before the command.
"""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from ..conftest import ROOT, _env, run_lbfl, tiny_run_args

CKPT = ["run.checkpoint_every=4", "train.momentum=0.9", "telemetry.flush_every=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 12-step run with checkpoints at steps 8 and 12; tests work on copies of it."""
    run = tmp_path_factory.mktemp("base") / "run"
    run_lbfl(tiny_run_args(run, *CKPT))
    return run


def _copy(base, run):
    shutil.copytree(base, run, symlinks=True)


def _no_constants(name):
    raise AssertionError(f"{name} in JSON output")


def _errors(p):
    return [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]


class _Marker:
    """Unpickling this runs os.system: what a crafted checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_crafted_checkpoint_does_not_execute_and_the_previous_one_is_used(tmp_path, base):
    run, ref = tmp_path / "run", tmp_path / "ref"
    run_lbfl(tiny_run_args(ref, *CKPT, "train.steps=16"))
    _copy(base, run)                                                 # checkpoints at steps 8 and 12
    marker = tmp_path / "pwned"
    crafted = run / "checkpoints" / "step_00000012" / "rank0000.pt"
    crafted.write_bytes(pickle.dumps({"model": _Marker(marker)}))
    # the reference behaviour of the file: a plain unpickle runs the command
    probe = tmp_path / "probe"
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads(open({str(crafted)!r}, 'rb').read()"
                    f".replace({str(marker).encode()!r}, {str(probe).encode()!r}))"], check=True)
    assert probe.exists()
    p = run_lbfl(tiny_run_args(run, *CKPT, "train.steps=16", "run.resume=true"))
    assert not marker.exists()
    assert "checkpoint step 12 skipped" in p.stderr and "resuming at step 8" in p.stderr
    a, b = torch.load(ref / "model.pt"), torch.load(run / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with h5py.File(run / "rank0000.h5") as f:
        np.testing.assert_array_equal(f["steps/step"][:], np.arange(16))


def test_truncated_or_missing_last_checkpoint_falls_back_then_refuses(tmp_path, base):
    run = tmp_path / "run"
    _copy(base, run)
    last = run / "checkpoints" / "step_00000012" / "rank0000.pt"
    last.write_bytes(last.read_bytes()[:1000])
    config_before = (run / "config.toml").read_text()
    p = run_lbfl(tiny_run_args(run, *CKPT, "run.resume=auto"))
    assert "checkpoint step 12 skipped" in p.stderr and "resuming at step 8" in p.stderr
    # both checkpoints unusable: one line, exit 2, config.toml untouched
    for d in ("step_00000012", "step_00000008"):
        (run / "checkpoints" / d / "rank0000.pt").unlink(missing_ok=True)
    (run / "config.toml").write_text(config_before)
    p = run_lbfl(tiny_run_args(run, *CKPT, "run.resume=true", "train.steps=20"), check=False)
    assert p.returncode == 2 and len(_errors(p)) == 1 and "can be loaded" in _errors(p)[0], p.stderr
    assert (run / "config.toml").read_text() == config_before


def test_resume_auto_starts_fresh_then_continues(tmp_path, base):
    p = run_lbfl(tiny_run_args(tmp_path / "fresh", *CKPT, "run.resume=auto", "train.steps=2"))
    assert "starting at step 0" in p.stderr
    run = tmp_path / "run"
    _copy(base, run)
    p = run_lbfl(tiny_run_args(run, *CKPT, "run.resume=auto", "train.steps=16"))
    assert "resuming at step 12" in p.stderr
    with h5py.File(run / "rank0000.h5") as f:
        np.testing.assert_array_equal(f["steps/step"][:], np.arange(16))
    # a finished run without checkpoints is never restarted over by auto
    done = tmp_path / "done"
    run_lbfl(tiny_run_args(done))
    p = run_lbfl(tiny_run_args(done, "run.resume=auto"), check=False)
    assert p.returncode == 2 and "no checkpoint to resume" in p.stderr


def test_resume_checks_the_checkpoint_config_and_survives_a_moved_directory(tmp_path, base):
    run = tmp_path / "run"
    _copy(base, run)
    (run / "config.toml").unlink()
    p = run_lbfl(tiny_run_args(run, *CKPT, "run.resume=true", "train.lr=0.5"), check=False)
    assert p.returncode == 2 and "train.lr differ from the run being resumed" in p.stderr
    moved = tmp_path / "elsewhere"
    run.rename(moved)
    rel = os.path.relpath(moved, ROOT)  # the CLI runs in ROOT: a relative out_dir
    p = run_lbfl(tiny_run_args(rel, *CKPT, "run.resume=true", "train.steps=16"))
    assert "resuming at step 12" in p.stderr


def test_overwrite_deletes_only_what_lbfl_wrote(tmp_path, base):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    # no lbfl config.toml: nothing is deleted
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "rank0000.h5").write_text("not lbfl's")
    p = run_lbfl(tiny_run_args(foreign, "run.overwrite=true"), check=False)
    assert p.returncode == 2 and "no config.toml written by lbfl" in p.stderr
    assert (foreign / "rank0000.h5").read_text() == "not lbfl's"
    # an lbfl run plus files of the user's among them
    run = tmp_path / "run"
    _copy(base, run)
    mine = [run / "checkpoints" / "notes.txt", run / "rank_extra.h5", run / "checkpoints" / "step_00000012" / "a.txt"]
    for f in mine:
        f.write_text("mine")
    (run / "model.pt").unlink()
    (run / "model.pt").symlink_to(outside)
    run_lbfl(tiny_run_args(run, "run.overwrite=true", "train.steps=6"))
    assert all(f.read_text() == "mine" for f in mine)
    assert outside.read_text() == "keep"
    assert not (run / "checkpoints" / "step_00000008").exists()
    with h5py.File(run / "rank0000.h5") as f:
        assert f["steps/step"].shape == (6,)


def test_planted_links_at_temporary_names_are_not_followed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").mkdir()
    victims = []
    for i, name in enumerate(["summary.json.tmp", "model.pt.tmp", "config.toml.tmp", "rank0000.h5.tmp",
                              "checkpoints/latest.json.tmp", ".summary.json.tmp"]):
        victim = tmp_path / f"victim{i}"
        victim.write_text("precious")
        (run / name).symlink_to(victim)
        victims.append(victim)
    run_lbfl(tiny_run_args(run, *CKPT))
    assert all(v.read_text() == "precious" for v in victims)
    assert json.loads((run / "summary.json").read_text())["steps"] == 12


def test_a_locked_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lbfl.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 1 on elsewhere\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = run_lbfl(tiny_run_args(run), check=False)
        assert p.returncode == 2 and len(_errors(p)) == 1 and "in use by another job (pid 1 on elsewhere)" in p.stderr
        assert sorted(x.name for x in run.iterdir()) == [".lbfl.lock"]
    finally:
        os.close(fd)
    run_lbfl(tiny_run_args(run))


def test_unusable_out_dir_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for out, want in [(afile / "run", "is not a directory"), (dangling, "dangling symbolic link")]:
        p = run_lbfl(tiny_run_args(out), check=False)
        assert p.returncode == 2 and len(_errors(p)) == 1 and want in _errors(p)[0], p.stderr
        assert "Traceback" not in p.stderr


def test_lr_1e6_stops_with_exit_4_within_one_step(tmp_path):
    run = tmp_path / "run"
    p = run_lbfl(tiny_run_args(run, "train.lr=1e6", "train.steps=40", "run.checkpoint_every=1"), check=False)
    assert p.returncode == 4, p.stderr
    errs = _errors(p)
    assert len(errs) == 1 and "non-finite" in errs[0] and "at step" in errs[0], p.stderr
    with h5py.File(run / "rank0000.h5") as f:
        loss = f["steps/loss"][:]
    first = int(np.flatnonzero(~np.isfinite(loss))[0])
    assert len(loss) - 1 - first <= 1  # stopped within one step of the first non-finite value
    assert f"at step {first}" in errs[0]
    summary = json.loads((run / "summary.json").read_text(), parse_constant=_no_constants)  # strict JSON
    assert summary["outcome"] == "nonfinite_stop" and summary["nonfinite"]["step"] == first
    assert not (run / "model.pt").exists()
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert latest <= first
    ck = torch.load(run / "checkpoints" / f"step_{latest:08d}" / "rank0000.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nonfinite_skip_drops_the_update_and_counts_it(tmp_path):
    run = tmp_path / "run"
    p = run_lbfl(tiny_run_args(run, "train.lr=1e6", "train.steps=12", "train.nonfinite=skip"), check=False)
    # the huge first update leaves a model whose outputs overflow: every later update is dropped, and
    # the run is a failure (exit 4, no model.pt), not "completed"
    assert p.returncode == 4, p.stderr
    assert "(train.nonfinite='skip'" in p.stderr and "'stop'" not in p.stderr
    with h5py.File(run / "rank0000.h5") as f:
        loss, skip = f["steps/loss"][:], f["steps/nonfinite_skip"][:]
    # exactly the non-finite steps were skipped, and a skipped update leaves the loss finite again
    # only if the model stayed finite: every skipped step's model equals the last good one
    np.testing.assert_array_equal(skip.astype(bool), ~np.isfinite(loss))
    assert skip.sum() >= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["nonfinite_skips"] == int(skip.sum()) and summary["outcome"] == "nonfinite_stop"
    assert not (run / "model.pt").exists()


def test_bad_environment_and_model_shape_are_one_line(tmp_path):
    env = {**_env(), "LBFL_ALLREDUCE_CHUNK_MB": "lots"}
    p = subprocess.run([sys.executable, "-m", "lbfl_mpi", *tiny_run_args(tmp_path / "a")], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(_errors(p)) == 1 and "LBFL_ALLREDUCE_CHUNK_MB='lots'" in p.stderr, p.stderr
    # the cnn pools twice: a 1x1 image leaves nothing to pool
    p = run_lbfl(tiny_run_args(tmp_path / "b", "data.name=synthetic", "data.synthetic_shape=[3, 1, 1]"), check=False)
    assert p.returncode == 2 and len(_errors(p)) == 1 and "cannot run on" in p.stderr, p.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_batch_far_beyond_memory_is_one_line(tmp_path):
    """2**24 synthetic 3x32x32 samples need 206 GB: the allocation fails, and the user gets one line
    naming the batch, exit 2, instead of a traceback."""
    p = run_lbfl(tiny_run_args(tmp_path / "run", "data.name=synthetic", "data.synthetic_train=256",
                               "train.batch_size=16777216"), check=False)
    assert p.returncode == 2, p.stderr
    errs = _errors(p)  # refused before the allocation where the host has less memory than one batch takes
    assert len(errs) == 1 and "train.batch_size=16777216" in errs[0], p.stderr
    assert "out of memory with" in errs[0] or "does not fit in memory" in errs[0], p.stderr
    assert "Traceback" not in p.stderr


def test_resume_into_a_directory_with_a_truncated_rank_file_is_one_line(tmp_path, base):
    """A quota hit left rank0000.h5 cut short: the resume is refused in one line, no hang."""
    run = tmp_path / "run"
    _copy(base, run)
    f = run / "rank0000.h5"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    p = run_lbfl(tiny_run_args(run, *CKPT, "run.resume=auto", "train.steps=16"), check=False, timeout=120)
    assert p.returncode == 2 and len(_errors(p)) == 1, p.stderr
    assert "damaged rank file" in _errors(p)[0] and "truncated" in _errors(p)[0]
