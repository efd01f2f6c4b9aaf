"""Stopping a run early and in step: preemption signals and non-finite values.

Both must end every rank at the *same* step, or a rank still training would wait forever in the next
collective. Each rank keeps two local facts, a preemption signal received (SIGUSR1/SIGTERM by default,
``run.preempt_signals``) and the first non-finite loss or gradient norm it saw (``train.nonfinite``),
and the ranks agree on them at step boundaries where they meet anyway (:class:`StopAgreement`):

* BSP: every step, right after the gradient exchange and before the optimizer step, so a non-finite
  value on any rank drops the update on every rank (``skip``) or stops every rank (``stop``);
* FedAvg: at every model average (every H steps), plus every ``run.preempt_check_every`` steps when
  set, and always before a checkpoint or the final model is written;
* one rank: every step, without communication.

An agreement is one MPI allgather of three int64 per rank on the control plane (a few microseconds,
see benchmarks/bench_agree.py), between ranks that have just synchronised.

Exit codes (lbfl_mpi/cli.py): 3 = checkpointed on a preemption signal, please requeue; 4 = stopped on
a non-finite value (the last good checkpoint is kept; nothing is written from the non-finite state).
"""
from __future__ import annotations

import math
import os
import signal
import sys

import numpy as np

REQUEUE_EXIT = 3
NONFINITE_EXIT = 4
QUANTITIES = ("loss", "grad_norm", "parameters", "test_loss")  # codes 1, 2, 3, 4 in the agreement vector


class Preempted(Exception):
    """Every rank checkpointed step ``step`` after a preemption signal; exit REQUEUE_EXIT."""

    def __init__(self, step: int, signame: str, rank: int, received_at: int):
        during = f"during step {received_at}" if received_at >= 0 else "before the first step"
        super().__init__(f"{signame} received by rank {rank} {during}; every rank checkpointed step {step} "
                         f"(steps done); exiting with code {REQUEUE_EXIT} (requeue; run.resume=auto continues)")
        self.step, self.signame, self.rank, self.received_at = step, signame, rank, received_at


class NonFiniteStop(Exception):
    """Every rank stopped after a non-finite value; exit NONFINITE_EXIT."""

    def __init__(self, step: int, quantity: str, rank: int, checkpoint: int | None, mode: str = "stop"):
        kept = (f"the last good checkpoint is step {checkpoint}" if checkpoint is not None
                else "no checkpoint was written")
        why = ""
        if mode != "stop" and quantity == "parameters":
            why = ": the model itself is non-finite, which dropping updates cannot repair"
        elif quantity == "test_loss":
            why = ": the final model's outputs are non-finite"
        super().__init__(f"non-finite {quantity} at step {step} on rank {rank} (train.nonfinite={mode!r}{why}); "
                         f"stopped every rank, {kept}; model.pt is not written")
        self.step, self.quantity, self.rank = step, quantity, rank


class NothingApplied(NonFiniteStop):
    """train.nonfinite='skip' dropped every update of the run on every rank; exit NONFINITE_EXIT."""

    def __init__(self, ran: int, start: int, checkpoint: int | None):
        kept = (f"the last good checkpoint is step {checkpoint}" if checkpoint is not None
                else "no checkpoint was written")
        Exception.__init__(self, f"train.nonfinite='skip' dropped all {ran} updates of steps {start} to "
                                 f"{start + ran - 1} on every rank (non-finite loss or gradient norm): nothing "
                                 f"was trained; {kept}; model.pt is not written")
        self.step, self.quantity, self.rank = start + ran - 1, "loss", -1


class SignalWatch:
    """Catch ``names`` (e.g. ["SIGUSR1", "SIGTERM"]): the first delivery only records it, so the
    ranks can agree on a step and checkpoint there; a second delivery of the same signal gets its
    default action at once (a user pressing Ctrl-C twice, or a scheduler's final SIGTERM).

    Once ``finished`` is set (the trainer sets it when the last step is done) a delivery is only
    noted: the run is complete, and dying of the signal now would turn its exit code 0 into 128 + N.
    :meth:`close` then keeps the handlers until the process ends, for the same reason."""

    def __init__(self, names: list[str]):
        self.finished = False
        self.received: str | None = None
        self.step = -1         # the step in progress, kept current by the trainer
        self.received_at = -1  # the step in progress when the first signal came
        self._previous: dict[int, object] = {}
        for name in names:
            sig = signal.Signals[name]
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.finished:
            if self.received is None:
                self.received, self.received_at = name, self.step
            return
        if self.received == name:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received is None:
            self.received, self.received_at = name, self.step
            print(f"lbfl: {name} received; checkpointing at the next step the ranks agree on",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.finished:  # the run is complete: a late signal must not change how the process ends
            return
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()


def nonfinite_quantity(loss: float, grad_sq: float) -> str | None:
    """Which quantity of a step is non-finite (the loss first: it usually goes first), or None."""
    if not math.isfinite(loss):
        return "loss"
    if not math.isfinite(grad_sq):
        return "grad_norm"
    return None


class StopAgreement:
    """The ranks' shared view of pending stops. ``note_nonfinite`` records this rank's first
    non-finite value; ``agree`` (collective where ``world_size > 1``) merges every rank's facts.

    After ``agree``: ``preempt`` is the name of a signal some rank received (or None) and
    ``nonfinite`` is (step, quantity, rank) of the earliest non-finite value any rank saw (or None)."""

    def __init__(self, comm, signals: SignalWatch | None, enabled: bool = True):
        self.comm, self.signals = comm, signals
        # nothing to agree on without signals to catch and without the non-finite guard: check() is free
        self.enabled = enabled
        self._checked_at = -1
        self.local_nonfinite: tuple[int, str] | None = None
        self.preempt: tuple[str, int, int] | None = None  # (signal, rank, step in progress when received)
        self.nonfinite: tuple[int, str, int] | None = None
        self.agreements = 0
        self.any_bad = False

    def note_nonfinite(self, step: int, quantity: str) -> None:
        if self.local_nonfinite is None:
            self.local_nonfinite = (step, quantity)

    def check(self, step: int, step_bad: bool = False, force: bool = False) -> None:
        """Agree on pending stops at most once per step (or again with ``force``); nothing when not
        ``enabled``. Collective where ``world_size > 1``: every rank calls it at the same points."""
        if not self.enabled:
            return
        if force or self._checked_at != step:
            self.agree(step_bad)
            self._checked_at = step

    def _local_vector(self, step_bad: bool) -> np.ndarray:
        w = self.signals
        sig, at = (w.received, w.received_at) if w is not None and w.received else (None, -1)
        step, q = self.local_nonfinite if self.local_nonfinite is not None else (-1, None)
        return np.array([0 if sig is None else int(signal.Signals[sig]), at, step,
                         0 if q is None else QUANTITIES.index(q) + 1, int(step_bad)], dtype=np.int64)

    def agree(self, step_bad: bool = False) -> bool:
        """Merge every rank's pending facts, and whether this step's value was non-finite on this rank
        (``step_bad``; afterwards ``any_bad`` says whether it was on any rank). Returns whether a stop
        is now agreed."""
        local = self._local_vector(step_bad)
        if self.comm.world_size > 1:  # on MPI whatever the data plane, watched (comm/watchdog.py)
            table = self.comm.control_allgather(local, np.empty((self.comm.world_size, local.size), dtype=np.int64))
        else:
            table = local[None]
        self.agreements += 1
        sigs = [(int(row[1]), r, signal.Signals(int(row[0])).name) for r, row in enumerate(table) if row[0]]
        if sigs and self.preempt is None:
            at, rank, name = min(sigs)
            self.preempt = (name, rank, at)
        bad = [(int(row[2]), QUANTITIES[int(row[3]) - 1], r) for r, row in enumerate(table) if row[3]]
        if bad:
            self.nonfinite = min(bad)
        self.any_bad = bool(table[:, 4].any())
        return self.preempt is not None or self.nonfinite is not None


def preemption_warnings(cfg, world_size: int) -> list[str]:
    """A start-up warning (the trainer prints it once, on rank 0) when a preemption signal cannot be
    honoured before the end: under FedAvg on several ranks the ranks agree on a pending signal only at
    a model average (every ``sync.period`` steps), every ``run.preempt_check_every`` steps and at a
    checkpoint (``run.checkpoint_every``), and a signal agreed on at step ``train.steps`` is too late
    (the run completes instead). So it warns when none of those three intervals is below train.steps."""
    if world_size < 2 or not cfg.run.preempt_signals or cfg.sync.mode != "fedavg":
        return []
    every = {"sync.period": cfg.sync.period, "run.preempt_check_every": cfg.run.preempt_check_every,
             "run.checkpoint_every": cfg.run.checkpoint_every}
    if min(v for v in every.values() if v > 0) < cfg.train.steps:
        return []
    shown = ", ".join(f"{k}={v}" for k, v in every.items())
    return [f"sync.mode='fedavg' with {shown} for train.steps={cfg.train.steps}: a preemption signal "
            f"({', '.join(cfg.run.preempt_signals)}) is acted on only at a model average, a checkpoint or a "
            "run.preempt_check_every step, and none comes before the end, so it cannot be honoured; set "
            f"run.preempt_check_every (e.g. {max(1, cfg.train.steps // 10)})"]
