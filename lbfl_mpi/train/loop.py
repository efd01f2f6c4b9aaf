"""The training loop of a worker: start or resume, run the steps, stop when every rank agrees.

    start            lock and check the run directory; resume the newest checkpoint every rank can
                     read, or broadcast rank 0's initial model; pretrain the teacher on a fresh run
    for each step    run_step (step.py) -> the rank file's row; then, each component deciding when:
                     stop on an agreed non-finite value, Evaluator, Checkpointer, stop on an agreed
                     preemption signal, Rebatcher
    end              a resumable final checkpoint, a last agreement that also checks the final model
                     (a non-finite model, or one that train.nonfinite='skip' never updated, is a
                     failure, exit 4, and no model.pt), the global model, summary.json; once the last
                     step is done a late signal no longer changes the outcome

Collectives of the loop are listed with the step's in step.py.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager

import torch

from ..config import ConfigError
from ..files import io_failure, printable
from ..run.checkpoint import latest_checkpoint, load_latest_valid
from ..run.rundir import commit_run_dir, prepare_run_dir, rank_file
from ..run.stopping import NonFiniteStop, NothingApplied, Preempted
from ..scaling.teacher_pretrain import pretrain_draw, pretrain_teacher
from ..telemetry import RankLog, StepTimer
from .components import Checkpointer, Evaluator, Rebatcher
from .step import run_step
from .summary import Progress, write_summary


def train(w) -> dict | None:
    """Run worker ``w`` to ``train.steps``; rank 0 returns the summary (None elsewhere). Raises
    Preempted or NonFiniteStop when the ranks agreed to stop, after what had to be written is."""
    cfg, comm, c = w.cfg, w.comm, w.client
    if w.plan is not None and w.batcher is not None:
        apply_plan_limits(w)
    ckpt = Checkpointer(w, states={**c.components(), "batcher": w.batcher})
    resume_step = resume_or_start(w, ckpt)
    if resume_step is None:  # a resumed run has its teacher in the checkpoint
        pretrain(w)
    log = open_log(w, resume_step)
    evaluator, rebatcher = Evaluator(w, log), Rebatcher(w)
    timer = StepTimer(w.device)
    bar = Progress(comm.rank == 0, cfg.train.steps, w.start_step)
    t0 = time.time()
    done = w.start_step
    with closing(w, log, bar):
        for step in range(w.start_step, cfg.train.steps):
            if c.transform.finished:  # AdaScale reached train.steps of progress (scaling/adascale.py)
                break
            row = run_step(w, c, step, timer)
            log.log_row(row)
            c.skips += row.nonfinite_skip
            done = step + 1
            last = c.transform.finished
            after_steps(w, log, ckpt, evaluator, done, t0, evaluator.due(done) or last, last=last)
            rebatcher.maybe_reallocate(step)
            bar.update(row.loss, evaluator.last_acc, evaluator.last_name)
        extra = {"steps_done": done} if c.transform.adascale is not None else {}
        summary = end_of_training(w, log, ckpt, evaluator, t0, done=done, **extra)
    return summary


@contextmanager
def closing(w, log: RankLog, bar: Progress):
    """The loop's resources, closed however it ends (progress bar, rank file, worker); a failed write
    (disk full, quota: files.io_failure) abandons the rank file first and is raised on, for the CLI to
    report on one line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if io_failure(e):
            log.abandon()
        raise
    finally:
        bar.close()
        log.close()
        w.close()


def after_steps(w, log: RankLog, ckpt: Checkpointer, evaluator, done: int, t0: float, evaluate: bool,
                last: bool = False) -> None:
    """After ``done`` steps, in this order: stop on an agreed non-finite value, evaluate (when
    ``evaluate``), checkpoint when due, stop on an agreed preemption signal (not after the ``last``
    step, which train.steps or AdaScale's progress makes the end)."""
    stop_if_nonfinite(w, log, t0)
    if evaluate:
        evaluator.run(done - 1, last=last)
    if ckpt.due(done):
        log.flush()
        ckpt.save(done, t0)
        stop_if_nonfinite(w, log, t0)
    if w.stops.preempt is not None and done < w.cfg.train.steps and not last:
        preempt(w, ckpt, log, done, t0)


def end_of_training(w, log: RankLog, ckpt: Checkpointer, evaluator, t0: float, done: int | None = None,
                    **extra) -> dict | None:
    """Collective, once every step is done (``done`` of them: train.steps unless AdaScale ended the run
    earlier): a resumable final checkpoint, the final model's checks, the global model and summary.json
    (``extra``: more summary fields)."""
    if w.stops.signals is not None:  # every step is done: a signal now cannot undo the run
        w.stops.signals.finished = True
    log.flush()
    done = w.cfg.train.steps if done is None else done
    if ckpt.due_at_end(done):
        ckpt.save(done, t0)
    check_final_model(w, done, evaluator.last_loss)
    stop_if_nonfinite(w, log, t0)
    stop_if_nothing_applied(w, log, t0, done)
    note_late_signal(w)
    w.save_global_model()
    return finish(w, log, t0, "completed", **extra)


def open_log(w, resume_step: int | None = None, path=None) -> RankLog:
    """The worker's rank file (``path`` defaults to the run directory's rankNNNN.h5): attributes of the
    run and its data plane; a resumed run keeps its rows before ``resume_step``."""
    cfg, comm = w.cfg, w.comm
    return RankLog(path or rank_file(cfg.run.out_dir, comm.rank), rank=comm.rank, world_size=comm.world_size,
                   config_json=cfg.to_json(), device=str(w.device), flush_every=cfg.telemetry.flush_every,
                   resume_step=resume_step, extra_attrs=w.data_plane_attrs(), plan=w.plan,
                   groups=getattr(w, "log_groups", None))


def apply_plan_limits(w) -> None:
    """Collective: each rank's planned largest permissible batch caps its dynamic batch. Every rank
    sees the same gathered limits, so an infeasible global batch is refused identically everywhere."""
    cfg = w.cfg
    limits = w.comm.allgather_obj(w.plan["max_batch"])
    cap = cfg.batching.max_batch or None
    merged = [m if cap is None else (cap if m is None else min(m, cap)) for m in limits]
    small = [r for r, m in enumerate(merged) if m is not None and m < cfg.batching.min_batch]
    if small:
        raise ConfigError(f"batching.memory_budget_gb={cfg.batching.memory_budget_gb}: the planned "
                          f"largest permissible batches {merged} are below batching.min_batch="
                          f"{cfg.batching.min_batch} on ranks {small}")
    if w.batcher.adaptive:  # beyond its limit a rank accumulates (batching/adaptive.py, step 4)
        w.batcher.set_max_batch(merged)
        cap, acc = merged[w.comm.rank], w.client.grad_pass.accumulate
        if cap is not None and not w.client.grad_pass.micro_batch:
            w.client.grad_pass.accumulate = min(acc, cap) if acc else cap
        return
    if all(m is not None for m in merged) and sum(merged) < w.global_batch:
        raise ConfigError(f"batching.global_batch={w.global_batch} does not fit the planned largest "
                          f"permissible batches {merged} (sum {sum(merged)})")
    w.batcher.set_max_batch(merged)
    w.set_batch_sizes(w.batcher.sizes)


def _load_own(comm, out_dir, decision):
    return load_latest_valid(comm, out_dir, decision.resume_steps)


def resume_or_start(w, ckpt: Checkpointer, load=_load_own) -> int | None:
    """Collective: lock and check the run directory, load the newest checkpoint every rank can
    read (falling back past damaged ones; ``load(comm, out_dir, decision)`` -> (step, payload,
    warnings), by default each rank its own file), or start from rank 0's initial model."""
    cfg, comm = w.cfg, w.comm
    decision = prepare_run_dir(cfg, comm)
    resume_step = None
    if decision.resume_steps:
        resume_step, payload, warnings = load(comm, cfg.run.out_dir, decision)
        if resume_step is None:  # identical on every rank: the load results were exchanged
            raise ConfigError(f"run.resume: no checkpoint in {cfg.run.out_dir} can be loaded ({warnings[-1]})")
        ckpt.restore(resume_step, payload)
    else:
        w.client.sync.broadcast_initial()
    commit_run_dir(cfg, comm, decision, fresh=resume_step is None)
    if comm.rank == 0:
        start = f"resuming at step {resume_step}" if resume_step is not None else "starting at step 0"
        print(f"lbfl: {start} of {cfg.train.steps} in {printable(cfg.run.out_dir)}", file=sys.stderr, flush=True)
    return resume_step


def pretrain(w) -> None:
    """Collective under BSP: scaling.teacher_pretrain_steps teacher steps at the initial weights
    (scaling/teacher_pretrain.py); model, buffers, RNG and training stream stay as they were."""
    cfg, c = w.cfg, w.client
    teacher = c.transform.teacher
    if teacher is None or not cfg.scaling.teacher_pretrain_steps:
        return
    draw = pretrain_draw(c.loader, cfg.run.seed, w.comm.rank, w.device, c.to_device)
    sync = cfg.sync
    bsp_first = sync.mode == "bsp" or (sync.mode == "postlocal" and sync.switch_step > 0)  # step 0 synchronises
    collective = w.comm.world_size > 1 and bsp_first
    done = pretrain_teacher(teacher, c.model, c.params, c.loss, draw, cfg.scaling.teacher_pretrain_steps,
                            cfg.train.batch_size, w.comm, collective, c.transform.average, c.loss_scale)
    if w.comm.rank == 0:
        print(f"lbfl: teacher pretrained for {done} of {cfg.scaling.teacher_pretrain_steps} steps",
              file=sys.stderr, flush=True)


def finish(w, log: RankLog, t0: float, outcome: str, **extra) -> dict | None:
    """Collective: rank 0 writes summary.json (also for a stopped run) and returns it."""
    wall = w.elapsed + time.time() - t0
    samples = w.comm.allgather_obj(w.samples_seen())
    sizes = w.comm.allgather_obj(w.client.loader.batch_size)
    skips = w.comm.allgather_obj(w.client.skips)
    if w.comm.rank != 0:
        return None
    return write_summary(w, log, wall, int(sum(samples)), sizes, outcome=outcome, nonfinite_skips=int(max(skips)),
                         **extra)


def stop_if_nonfinite(w, log: RankLog, t0: float) -> None:
    """After an agreement found a non-finite value (train.nonfinite='stop'): every rank stops here;
    nothing is written from the non-finite state, earlier checkpoints stay."""
    if w.stops.nonfinite is None:
        return
    step, quantity, rank = w.stops.nonfinite
    log.flush()
    latest = latest_checkpoint(w.cfg.run.out_dir)
    finish(w, log, t0, "nonfinite_stop", nonfinite={"step": step, "quantity": quantity, "rank": rank})
    raise NonFiniteStop(step, quantity, rank, latest["step"] if latest else None, w.cfg.train.nonfinite)


def check_final_model(w, done: int, test_loss: float | None) -> None:
    """Collective: the last agreement of the run, which also checks the model about to be written
    (train.nonfinite 'stop' or 'skip'): its weights must be finite, and so must the final evaluation's
    test loss (identical on every rank). Under 'skip' a huge update can blow the weights up (to inf, or
    to values whose forward overflows) while every loss before it was finite; every later update is
    then dropped, and without this check the run would be reported as completed and model.pt would
    hold that model."""
    nonfinite = w.cfg.train.nonfinite
    if nonfinite != "ignore":
        if not all(bool(torch.isfinite(t).all()) for t in w.client.sync.state):
            w.stops.note_nonfinite(done - 1, "parameters")
        elif test_loss is not None and not math.isfinite(test_loss):
            w.stops.note_nonfinite(done - 1, "test_loss")
    w.stops.check(done - 1, force=nonfinite != "ignore")


def stop_if_nothing_applied(w, log: RankLog, t0: float, done: int | None = None) -> None:
    """Collective. train.nonfinite='skip' dropped every update of this run on every rank: the model is
    the one it started from, which is no result. A failure outcome (exit 4), no model.pt."""
    ran = (w.cfg.train.steps if done is None else done) - w.start_step
    skips = w.comm.allgather_obj(w.client.skips)
    if w.cfg.train.nonfinite != "skip" or ran < 1 or min(skips) < ran:
        return
    log.flush()
    latest = latest_checkpoint(w.cfg.run.out_dir)
    finish(w, log, t0, "nonfinite_all_skipped")
    raise NothingApplied(ran, w.start_step, latest["step"] if latest else None)


def note_late_signal(w) -> None:
    """A preemption signal the ranks agreed on only at the end (FedAvg agrees at model averages, so a
    signal after the last one before train.steps): the run is complete, nothing needs a checkpoint,
    and the job exits 0; say so instead of leaving the signal unanswered."""
    if w.stops.preempt is None or w.comm.rank != 0:
        return
    name, rank, at = w.stops.preempt
    print(f"lbfl: {name} received by rank {rank} during step {at}; the run reached train.steps="
          f"{w.cfg.train.steps} before the ranks next agreed, so it completes and exits 0", file=sys.stderr, flush=True)


def preempt(w, ckpt: Checkpointer, log: RankLog, done: int, t0: float) -> None:
    """Every rank agreed on a preemption signal: checkpoint this step (unless just done) and stop."""
    log.flush()
    if ckpt.last != done:
        ckpt.save(done, t0)
        stop_if_nonfinite(w, log, t0)
    raise Preempted(done, *w.stops.preempt)
