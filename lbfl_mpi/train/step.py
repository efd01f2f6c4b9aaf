"""One training step of one client, as named stages read top to bottom (Tyagi 2025, Eq. 2:
t_step = t_c + t_mov + [i % H == 0] t_sync).

    data             fetch + host->device                                   t_data (the paper's t_mov)
    forward_backward local batch, or micro-batches (train.micro_batch,      t_compute
                     scaling.small_batch)
    straggle         emulated slower device (hetero.slowdown)               t_straggle
    statistics       per-layer |g_l|^2, non-finite check, BSP stats vector  t_compute
    inject           teacher v2: small-batch noise into the local gradient   t_teacher
                     (scaling/noise_inject.py), before the exchange
    exchange_grads   BSP: compression (Eq. 9) + allreduce of the gradients  t_compress, t_sync
    agree            stops every rank must take together                    (t_sync of the next collective)
    update           loss scaler, gradient transform (Eq. 5-8), optimizer   t_compute, t_teacher
    exchange_params  FedAvg: model average (Eq. 1b) every H steps           t_compress, t_sync

Each stage writes its columns into the step's :class:`~lbfl_mpi.telemetry.step_row.StepRow`, which is
the rank file's column schema. Components time themselves where only they know the split (an
exchange its compression, the transform its teacher); :meth:`StepTimer.lap_split` books those parts.

Every collective a step can issue, in order. Every rank takes the same branches: each condition below
is a function of the config, the step number and values all ranks share.

| stage | collective | when | why |
|---|---|---|---|
| exchange_grads | Ibarrier polled (Comm.arrive) | ``sync.wait_poll_us > 0`` and > 1 rank, before each allreduce below | waiting ranks sleep instead of spinning |
| exchange_grads | allreduce of ``[b g, stats, b]`` (one buffer, or buckets started during backward) | BSP steps (postlocal before ``switch_step``), > 1 rank, dense | G = sum_c b_c g_c / sum_c b_c, and the free noise-scale statistics |
| exchange_grads | bcast of the gradient order | first BSP step with ``sync.bucket_mb > 0`` | every rank lays out the same buckets from step 2 |
| exchange_grads | allgather of ``[k, w]``, allgatherv of the top-k payload, allreduce of the stats | BSP steps with ``compress.method = topk`` past ``compress.warmup_steps`` | sparse exchange (Eq. 9); dense allreduce when density x ranks > 1 |
| agree | Allgather of each rank's pending stops | steps that synchronised gradients, and every step on 1 rank; only with preemption signals or ``train.nonfinite != ignore`` | a signal or a non-finite value stops every rank at the same step |
| update | allreduce of the teacher's gradients and sigma^2 estimate | ``scaling.method = teacher`` training steps under BSP | one teacher on every rank |
| exchange_params | allreduce of ``[w x, w]`` (dense), or the top-k exchange of the model delta | FedAvg sync steps: ``(step - start + 1) % sync.period == 0`` | the model average of Eq. 1b |
| exchange_params | Allgather of pending stops (agree) | FedAvg sync steps, and every ``run.preempt_check_every`` steps | stops between averages |

Outside the step, the loop (loop.py) issues: the evaluation's allreduce (and the sample-weighted model
average of a global view) every ``train.eval_every`` steps; a checkpoint's forced agreement, barrier
and rank-0 writes every ``run.checkpoint_every`` steps; dynamic batching's allgather of throughputs
every ``batching.interval`` steps; and at start-up and the end the run-directory, resume, broadcast
and summary collectives.
"""
from __future__ import annotations

import time

from ..compress.density import step_density
from ..optim import eager_step, lr_at, set_lr_
from ..run.stopping import nonfinite_quantity
from ..telemetry import StepRow, StepTimer


def run_step(w, c, step: int, timer: StepTimer) -> StepRow:
    """One step of client ``c`` on worker ``w``; returns its row."""
    row = StepRow(step=step)
    x, y = data(w, c, step, timer, row)
    loss, micro = forward_backward(c, x, y, timer, row)
    straggle(w, timer, row)
    stats, bad = statistics(w, c, step, loss, micro, timer, row)
    inject(w, c, step, stats, timer)
    res_g = exchange_grads(w, c, step, stats, timer, row)
    drop = agree(w, c, step, res_g, bad)
    update(w, c, stats, drop, timer, row)
    res_p = exchange_params(w, c, step, timer, row)
    finish_row(w, c, res_g, res_p, timer, row)
    return row


def data(w, c, step: int, timer: StepTimer, row: StepRow):
    """The learning rate of this step, its top-k density (compress/density.py), and its batch on the
    device."""
    row.lr = lr_at(w.cfg.train, c.transform.schedule_step(step), w.global_batch)
    set_lr_(c.opt, row.lr)
    if w.varies_density:
        c.sync.set_density(step_density(w.cfg.compress, c.transform.was_critical, w.global_batch))
    if w.stops.signals is not None:
        w.stops.signals.step = step
    w.comm.step = step  # the MPI watchdog's message names it
    timer.start()
    x, y = c.to_device(*w.batches(step, c))
    timer.lap("data")
    row.batch_size = int(y.shape[0])
    return x, y


def forward_backward(c, x, y, timer: StepTimer, row: StepRow):
    """Loss and local gradients (an overlapping exchange starts its buckets during the last, or only,
    backward pass: with train.micro_batch the earlier micro-batches only accumulate)."""
    b = row.batch_size
    loss, micro = c.backward(x, y, before_last=lambda: c.sync.begin_step(b))
    timer.lap("compute")
    return loss, micro


def straggle(w, timer: StepTimer, row: StepRow) -> None:
    """An emulated slower device sleeps (f - 1) x t_compute: its own column, never inside t_compute.
    Without emulation nothing is lapped, so t_straggle is exactly 0 (a lap here would book the few
    microseconds between two timer calls as straggling)."""
    if w.slowdown > 1:
        time.sleep((w.slowdown - 1) * timer.get("compute"))
        timer.lap("straggle")


def statistics(w, c, step: int, loss, micro, timer: StepTimer, row: StepRow):
    """GradStats of the local gradient (scaling/stats.py); whether this rank's values are non-finite."""
    stats = c.grad_pass.measure(step, row.batch_size, micro, c.loss_scale)
    row.grad_norm_sq = stats.local_sq
    row.loss = float(loss.item())
    bad = None  # fp16: a non-finite step is the loss scaler's business (skip it, lower the scale)
    nonfinite = w.cfg.train.nonfinite
    if nonfinite != "ignore" and c.scaler is None:
        bad = nonfinite_quantity(row.loss, stats.local_sq)
        if bad is not None and nonfinite == "stop":
            w.stops.note_nonfinite(step, bad)
    timer.lap("compute")
    return stats, bad


def inject(w, c, step: int, stats, timer: StepTimer) -> None:
    """Teacher v2 adds its noise to the local gradient, so that it rides in a BSP exchange (B and W of
    noise_inject.py's (S) are the global batch and the ranks there; the local batch and 1 otherwise).
    Its time is booked as compute here and moved to t_teacher by the update stage."""
    if c.transform.injector is not None:
        c.transform.inject_(stats, c.sync.averages_grads(step), w.comm.world_size, w.global_batch)
        timer.lap("compute")


def exchange_grads(w, c, step: int, stats, timer: StepTimer, row: StepRow):
    """BSP: the gradients (and the noise-scale statistics) summed over the ranks; FedAvg: nothing."""
    local = stats.local_vector(stats.layer_sq, row.batch_size, stats.noise_sq) if w.exchanges_stats else None
    res = c.sync.sync_grads(step, row.batch_size, stats=local)
    timer.lap_split("sync", compress=res.t_compress)
    stats.synchronised(res.stats, res.synced and w.comm.world_size > 1)
    return res


def agree(w, c, step: int, res_g, bad) -> bool:
    """Where the ranks meet anyway (a gradient exchange, or one rank), agree on stops; returns whether
    this step's update is dropped (a non-finite value under train.nonfinite = skip or stop)."""
    if res_g.synced and w.comm.world_size > 1 or w.comm.world_size == 1:
        w.stops.check(step, bad is not None)
        return w.stops.any_bad and w.cfg.train.nonfinite != "ignore"
    return bad is not None  # FedAvg between averages: each client drops its own non-finite update


def update(w, c, stats, drop: bool, timer: StepTimer, row: StepRow) -> None:
    """Loss-scaler check (on the synchronised gradient under BSP: the same decision everywhere), the
    gradient transform (Eq. 5-8; scaling/transform.py) and the optimizer step."""
    finite = True
    if c.scaler is not None:
        finite = c.scaler.unscale_([p.grad for p in c.params])
        c.scaler.update(finite)
    if finite and not drop:
        if c.correction is not None:  # FedProx's proximal term, SCAFFOLD's control variates (fl/algorithms.py)
            c.correction()
        info = c.transform.apply(stats)
        if c.transform.lr_scale != 1.0:  # AdaScale: eta_t = r_t lr(tau_t)
            row.lr *= c.transform.lr_scale
            set_lr_(c.opt, row.lr)
        eager_step(c.opt)
        c.transform.after_update()
    else:
        info = c.transform.skipped()  # fp16 overflow: under BSP every rank skips this step
    for k, v in info.items():
        setattr(row, k, v)
    timer.lap_split("compute", teacher=row.t_teacher)
    row.nonfinite_skip = int(drop and w.cfg.train.nonfinite == "skip")


def exchange_params(w, c, step: int, timer: StepTimer, row: StepRow):
    """FedAvg: the model average every H steps (Eq. 1b); agree on stops there, or every
    run.preempt_check_every steps."""
    res = c.sync.sync_params(step, row.batch_size)
    timer.lap_split("sync", compress=res.t_compress)
    every = w.cfg.run.preempt_check_every
    if res.synced or (every and (step + 1) % every == 0):
        w.stops.check(step)
    return res


def finish_row(w, c, res_g, res_p, timer: StepTimer, row: StepRow) -> None:
    """The columns of the whole step: times, bytes, compression, throughput (dynamic batching reads it)."""
    res = res_g if res_g.synced else res_p
    busy = timer.get("compute") + timer.get("straggle")
    if w.batcher is not None:
        w.batcher.observe(row.batch_size, busy)
        if w.batcher.adaptive:  # the goodput model's measurements (batching/adaptive.py, step 1)
            w.batcher.observe_step(c.grad_pass.chunks, row.batch_size, busy + timer.get("data"),
                                   timer.get("sync") + timer.get("compress"))
            row.goodput = w.batcher.goodput_pred
    row.global_batch, row.micro_batches = w.global_batch, c.grad_pass.chunks
    row.epoch = c.loader.epoch
    row.t_data, row.t_compute, row.t_compress = timer.get("data"), timer.get("compute"), timer.get("compress")
    row.t_sync, row.t_straggle = timer.get("sync"), timer.get("straggle")
    row.t_link = res_g.t_link + res_p.t_link  # inside t_sync (exchange/link.py)
    row.t_step = sum(timer.times.values())
    row.synced = int(res_g.synced or res_p.synced)
    row.bytes_sent = res_g.bytes_sent + res_p.bytes_sent
    row.density_actual, row.residual_norm_sq = res.density, res.residual_norm_sq
    row.throughput = row.batch_size / busy if busy > 0 else 0.0
