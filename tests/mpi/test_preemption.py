"""Preemption under mpiexec (run/stopping.py, run/rundir.py, run/checkpoint.py).

A SIGUSR1 to one rank, or to mpiexec (which forwards it to every rank), must end every rank with exit
code 3 within 2 steps, all checkpointed at the same step; ``run.resume=auto`` then finishes the run
bitwise equal to an uninterrupted one, with every step exactly once in each rank's HDF5 file. The
reference is the uninterrupted run of the same config: its model.pt and its loss column.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import time

import h5py
import numpy as np
import pytest
import torch

from ..conftest import Launched, rank_pids, run_lbfl, tiny_run_args

# ~10 ms steps (the slowdown sleeps), momentum and a dynamic learning-rate path: every piece of
# state (optimizer, RNG, data position, partial HDF5 blocks) must survive the interruptions
OPTS = ["train.momentum=0.9", "hetero.slowdown=[6, 6]", "train.eval_every=25", "telemetry.flush_every=7",
        "train.batch_size=8", "sync.wait_poll_us=200", "data.name=synthetic", "data.synthetic_shape=[1, 8, 8]",
        "data.synthetic_train=2048", "data.synthetic_test=256"]
RECEIVED = re.compile(r"received by rank (\d+) (during step (\d+)|before the first step); every rank "
                      r"checkpointed step (\d+)")


STEPS = 100


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    ref = tmp_path_factory.mktemp("reference") / "run"
    run_lbfl(_args(ref, STEPS), n=2)
    return ref


def _args(out, steps, *extra):
    return tiny_run_args(out, f"train.steps={steps}", *OPTS, *extra)


def _assert_same_run(ref, run, n, steps):
    """Bitwise: the final global model, and each rank's loss column; every step logged exactly once."""
    a, b = torch.load(ref / "model.pt"), torch.load(run / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for r in range(n):
        with h5py.File(ref / f"rank{r:04d}.h5") as fa, h5py.File(run / f"rank{r:04d}.h5") as fb:
            np.testing.assert_array_equal(fb["steps/step"][:], np.arange(steps))
            np.testing.assert_array_equal(fb["steps/loss"][:], fa["steps/loss"][:])
            np.testing.assert_array_equal(fb["eval/step"][:], fa["eval/step"][:])


def _preempt_once(out, steps, target, n=2, delay=0.0, resume=True):
    """Start (or resume) the run, signal ``target`` ('mpiexec' or a rank) after ``delay`` seconds of
    training; returns (exit code, stderr)."""
    job = Launched(_args(out, steps, *(["run.resume=auto"] if resume else [])), n=n)
    job.wait_for(" at step ")  # printed once every rank has its signal handlers
    time.sleep(delay)
    pid = job.proc.pid if target == "mpiexec" else rank_pids(job.proc.pid, n)[target]
    os.kill(pid, signal.SIGUSR1)
    return job.finish(), job.stderr


def _check_stop(run, err, steps, start):
    """One preemption of a segment that started at step ``start``: the stop within 2 steps of the
    signal, no summary or model yet, and every rank's rows flushed up to the checkpointed step;
    returns that step."""
    m = RECEIVED.search(err)
    assert m, err
    received = int(m.group(3)) if m.group(3) else start - 1  # "before the first step" of the segment
    stopped = int(m.group(4))
    assert start <= stopped < steps and stopped - (received + 1) <= 2, err  # within 2 steps of the signal
    assert not (run / "summary.json").exists() and not (run / "model.pt").exists()
    for r in range(2):
        with h5py.File(run / f"rank{r:04d}.h5") as f:
            np.testing.assert_array_equal(f["steps/step"][:], np.arange(stopped))
    return stopped


def test_repeated_preempt_resume_cycles_match_an_uninterrupted_run(tmp_path, reference):
    """SIGUSR1 at random moments to mpiexec (which forwards it to every rank) or to either rank, 3
    times over one run (seed 1234 reaches all three targets in its first three; 4, 6, 10 and 20 cycles
    passed too, and 3 keeps `make test` under its time limit; the three stops land within the first
    ~30 of the 100 steps, since each signal comes at most 0.25 s after a segment's first step): each
    stop as :func:`_check_stop` says,
    and ``run.resume=auto`` then finishes the run bitwise equal to the uninterrupted one."""
    steps, cycles = STEPS, 3
    ref, run = reference, tmp_path / "run"
    t0 = time.monotonic()
    rng = random.Random(1234)
    done, stops, targets = 0, [], set()
    while done < cycles:
        target = rng.choice(["mpiexec", 0, 1])
        targets.add(target)
        rc, err = _preempt_once(run, steps, target, delay=rng.uniform(0.0, 0.25))
        if rc == 0:
            pytest.fail(f"the run finished after {done} preemptions; raise steps")
        assert rc == 3, err
        stops.append(_check_stop(run, err, steps, stops[-1] if stops else 0))
        done += 1
    run_lbfl(_args(run, steps, "run.resume=auto"), n=2)
    _assert_same_run(ref, run, 2, steps)
    assert stops == sorted(stops) and len(set(stops)) == cycles, stops
    assert targets == {"mpiexec", 0, 1}, targets
    print(f"soak: {cycles} preempt/resume cycles on 2 ranks, stopped at steps {stops}, "
          f"{time.monotonic() - t0:.1f} s wall in all")


# --------------------------------------------------------------------------- non-finite values, 2 ranks
def _inject(out, *extra, reference=False, step=5, rank=1):
    from ..conftest import SCRIPTS, run_mpi

    args = [str(SCRIPTS / "nonfinite_inject.py"), "--inject-rank", str(rank), "--inject-step", str(step),
            *(["--reference"] if reference else []),
            *tiny_run_args(out, "train.steps=12", "train.momentum=0.9", *extra)]
    return run_mpi(2, args, check=False, timeout=180)


def test_bsp_skip_drops_the_update_on_every_rank(tmp_path):
    """A NaN loss on rank 1 at step 5: both ranks drop step 5's update, and the result equals a run
    whose step-5 optimizer step was not applied (the reference)."""
    p = _inject(tmp_path / "skip", "train.nonfinite=skip")
    assert p.returncode == 0, p.stderr
    ref = _inject(tmp_path / "ref", reference=True)
    assert ref.returncode == 0, ref.stderr
    for r in range(2):
        with h5py.File(tmp_path / "skip" / f"rank{r:04d}.h5") as f:
            np.testing.assert_array_equal(np.flatnonzero(f["steps/nonfinite_skip"][:]), [5])
    a, b = torch.load(tmp_path / "ref" / "model.pt"), torch.load(tmp_path / "skip" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("mode,stop_step", [("bsp", 5), ("fedavg", 7)])
def test_stop_is_agreed_by_every_rank(tmp_path, mode, stop_step):
    """BSP stops at the step of the NaN; FedAvg (H=4) at the next average, after step 7."""
    out = tmp_path / "run"
    p = _inject(out, f"sync.mode={mode}", "sync.period=4", "run.checkpoint_every=4")
    assert p.returncode == 4, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lbfl: error:")]
    assert len(errors) == 1 and "non-finite loss at step 5 on rank 1" in errors[0], p.stderr
    for r in range(2):
        with h5py.File(out / f"rank{r:04d}.h5") as f:
            assert f["steps/step"][-1] == stop_step
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    assert latest <= stop_step
    for r in range(2):  # what was kept is finite
        ck = torch.load(out / "checkpoints" / f"step_{latest:08d}" / f"rank{r:04d}.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
