"""The training loop of a federated worker (``fl.clients > 0``): train/loop.py's start, stops,
evaluation, checkpoints and end, with a round (sync.period steps on the step axis; rounds.py) where that
loop has a step. The ranks meet once per round, so stops are agreed, evaluations and checkpoints
taken, at round ends: an evaluation after the first round whose end reaches a multiple of
train.eval_every, a checkpoint every run.checkpoint_every steps (a multiple of sync.period)."""
from __future__ import annotations

import sys
import time

from ..telemetry import StepTimer
from ..train.components import Checkpointer, Evaluator
from ..train.loop import after_steps, closing, end_of_training, open_log, resume_or_start
from ..train.summary import Progress
from .resume import load_federated, retire_rank_files


def train_federated(w) -> dict | None:
    cfg, comm, fed = w.cfg, w.comm, w.federation
    ckpt = Checkpointer(w, states={"model": w.client.model, "federation": fed})  # the model: the global one
    resume_step = resume_or_start(w, ckpt, load=load_federated)
    if resume_step is not None and comm.rank == 0:
        for moved in retire_rank_files(cfg.run.out_dir, comm.world_size, resume_step):
            print(f"lbfl: {moved.name} of the earlier, larger job moved to {moved.parent}", file=sys.stderr,
                  flush=True)
    fed.start()
    log = open_log(w, resume_step)
    evaluator = Evaluator(w, log)
    timer = StepTimer(w.device)
    h, every = cfg.sync.period, cfg.train.eval_every
    bar = Progress(comm.rank == 0, cfg.train.steps // h, w.start_step // h, unit="round")
    t0 = time.time()
    with closing(w, log, bar):
        for round_ in range(w.start_step // h, cfg.train.steps // h):
            rows = fed.run_round(round_, timer)
            for row in rows:
                log.log_row(row)
            for row in fed.client_rows:
                log.log_group("clients", row)
            if comm.rank == 0:
                log.log_group("rounds", fed.round_row)
            done = (round_ + 1) * h
            w.stops.check(done - 1)  # the ranks meet here anyway: agree on signals and non-finite values
            evaluate = bool(every) and done // every > (done - h) // every or done == cfg.train.steps
            after_steps(w, log, ckpt, evaluator, done, t0, evaluate)
            bar.update(rows[-1].loss, evaluator.last_acc, evaluator.last_name)
        summary = end_of_training(w, log, ckpt, evaluator, t0, fl_rounds=fed.rounds_done, fl_clients=fed.n_clients,
                                  fl_clients_per_round=fed.k, fl_algorithm=cfg.fl.algorithm,
                                  fl_server_optimizer=cfg.fl.server_optimizer)
    return summary
