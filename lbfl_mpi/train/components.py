"""The loop's components, each owning its "when": checkpoints, evaluation, dynamic re-batching.

The loop (loop.py) asks each one at the end of every step; each decides from the step number and the
config, identically on every rank, so the collectives they issue meet.
"""
from __future__ import annotations

import time

import torch

from ..run.checkpoint import save_checkpoint, set_rng_state


class Checkpointer:
    """``run.checkpoint_every``: a checkpoint of every state in ``states`` (key -> an object with
    ``state_dict``/``load_state_dict``, or None when the run has no such part) plus the elapsed wall
    time and the random state. One checkpoint state dict, built from the components' own."""

    def __init__(self, worker, states: dict):
        self.w, self.states = worker, states
        self.every = worker.cfg.run.checkpoint_every
        self.last: int | None = None  # step of the newest checkpoint of this run (written or resumed)

    def due(self, done: int) -> bool:
        return bool(self.every) and done % self.every == 0

    def due_at_end(self, done: int) -> bool:
        """The end is always resumable (e.g. to train longer), unless a checkpoint was just written."""
        return bool(self.every) and done % self.every != 0 and self.w.start_step < done

    def state_dict(self, t0: float) -> dict:
        out = {k: (v.state_dict() if v is not None else None) for k, v in self.states.items()}
        out["elapsed"] = self.w.elapsed + time.time() - t0
        return out

    def restore(self, step: int, ck: dict) -> None:
        """Load a checkpoint's payload into every component (random state last)."""
        for k, v in self.states.items():
            if v is not None and ck.get(k) is not None:
                v.load_state_dict(ck[k])
        self.w.elapsed = ck["elapsed"]
        if self.w.batcher is not None and ck.get("batcher"):
            self.w.set_batch_sizes(self.w.batcher.sizes)
        set_rng_state(ck["rng"])
        self.w.start_step = step
        self.last = step

    def save(self, done: int, t0: float) -> None:
        """Collective. Never from a state some rank found non-finite: the ranks agree first."""
        w = self.w
        nonfinite = w.cfg.train.nonfinite
        if nonfinite != "ignore" and not all(bool(torch.isfinite(t).all()) for t in w.client.sync.state):
            w.stops.note_nonfinite(done - 1, "parameters")
        w.stops.check(done - 1, force=nonfinite != "ignore")
        if w.stops.nonfinite is not None:
            return
        save_checkpoint(w.comm, w.cfg.run.out_dir, done, self.state_dict(t0), config=w.cfg.to_dict())
        self.last = done


class Evaluator:
    """``train.eval_every``: the global model's test loss and accuracy, and always after the last step;
    each evaluation's wall time on this rank is logged as ``t_eval`` (it is outside every ``t_step``).
    With a validation split (``data.val_fraction``) every evaluation measures it instead (val_loss,
    val_acc), and the test set is measured once, after the last step (test_* NaN before it)."""

    def __init__(self, worker, log):
        self.w, self.log = worker, log
        self.every, self.steps = worker.cfg.train.eval_every, worker.cfg.train.steps
        self.last_acc: float | None = None
        self.last_loss: float | None = None
        self.last_name = "test_acc"  # which set last_acc is of: test_acc, or val_acc before the test is measured

    def due(self, done: int) -> bool:
        return bool(self.every) and done % self.every == 0 or done == self.steps

    def run(self, step: int, last: bool = False) -> None:
        """Evaluate after 0-based ``step``; ``last``: the run ends there (train.steps, or AdaScale's
        progress before it), so a run with a validation split measures its test set now."""
        t, nan = time.perf_counter(), float("nan")
        final = self.w.val_set is None or last or step + 1 == self.steps
        # every set of this evaluation in one global view (the model average is formed once)
        sets = {"val": self.w.val_set, "test": self.w.test_set if final else None, "train": self.w.probe_set}
        sets = {k: v for k, v in sets.items() if v is not None}
        got = dict(zip(sets, self.w.evaluate_many(list(sets.values()))))  # host floats: the device work is done
        val, test = got.get("val", (nan, nan)), got.get("test", (nan, nan))
        more = {"val_loss": val[0], "val_acc": val[1]}
        if "train" in got:  # train.eval_train_samples (and the sharpness of its first batch)
            more["train_loss"], more["train_acc"] = got["train"]
            if self.w.cfg.train.eval_sharpness_iters:
                more["sharpness"] = self.w.sharpness(self.w.cfg.train.eval_sharpness_iters)
        self.log.log_eval(step, *test, time.perf_counter() - t, **more)
        # the progress bar's and the final check's reading: the test set only once it is measured
        self.last_loss, self.last_acc = test if final else val
        self.last_name = "test_acc" if final else "val_acc"


class Rebatcher:
    """Dynamic batching (``batching.mode = dynamic``): every ``batching.interval`` steps, before the last,
    the batcher re-allocates the batches across ranks (batching/dynamic.py)."""

    def __init__(self, worker):
        self.w = worker

    def maybe_reallocate(self, step: int) -> None:
        w = self.w
        if w.batcher is None or step + 1 >= w.cfg.train.steps:
            return
        new = w.batcher.maybe_reallocate(step, w.comm, phi=w.client.transform.noise.b_simple())
        if new is not None:
            w.set_batch_sizes(new)
