"""Signal handling, the one-rank agreement and the run-directory file rules, in-process
(run/stopping.py, files.py). The multi-rank agreement is tested under mpiexec in tests/mpi/test_preemption.py."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

from lbfl_mpi.files import owned, remove_owned
from lbfl_mpi.run.stopping import SignalWatch, StopAgreement, nonfinite_quantity


class _OneRank:
    world_size, rank = 1, 0


def test_first_signal_is_recorded_with_its_step_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGUSR1)
    watch = SignalWatch(["SIGUSR1"])
    try:
        watch.step = 7
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.received == "SIGUSR1" and watch.received_at == 7
        agree = StopAgreement(_OneRank(), watch)
        assert agree.agree() and agree.preempt == ("SIGUSR1", 0, 7)
    finally:
        watch.close()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_second_delivery_of_the_same_signal_gets_the_default_action():
    code = ("import os, signal, time\n"
            "from lbfl_mpi.run.stopping import SignalWatch\n"
            "w = SignalWatch(['SIGUSR1'])\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "print('survived first', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "time.sleep(5)\n"
            "print('survived second', flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGUSR1  # killed by the signal's default action
    assert "survived first" in p.stdout and "survived second" not in p.stdout


def test_nonfinite_agreement_keeps_the_earliest_value():
    assert nonfinite_quantity(1.0, 2.0) is None
    assert nonfinite_quantity(math.nan, math.inf) == "loss"
    assert nonfinite_quantity(1.0, math.inf) == "grad_norm"
    agree = StopAgreement(_OneRank(), None)
    assert not agree.agree(step_bad=False) and not agree.any_bad
    agree.note_nonfinite(4, "grad_norm")
    agree.note_nonfinite(5, "loss")  # later values do not replace the first
    assert agree.agree(step_bad=True) and agree.any_bad
    assert agree.nonfinite == (4, "grad_norm", 0) and agree.preempt is None


def test_only_files_lbfl_writes_are_removed(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("keep")
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    ours = ["config.toml", "summary.json", "model.pt", "rank0000.h5", "rank0012.h5", "checkpoints/latest.json",
            "checkpoints/step_00000004/rank0001.pt", "checkpoints/step_00000004/meta.json", ".model.pt.ab12.tmp"]
    theirs = ["notes.txt", "rank0.h5", "rank00000.h5", "checkpoints/step_00000004/extra.pt", "model.pt.bak"]
    for name in ours + theirs:
        (run / name).write_text("x")
    (run / "rank0001.h5").symlink_to(outside)  # a link with our name: the link goes, not its target
    assert all(owned(n) for n in ours) and not any(owned(n) for n in theirs)
    removed = remove_owned(run)
    assert sorted(removed) == sorted(ours + ["rank0001.h5"])
    assert all((run / n).exists() for n in theirs) and outside.read_text() == "keep"
    assert (run / "checkpoints" / "step_00000004").is_dir()  # not empty: kept
