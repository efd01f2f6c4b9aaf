"""The client's step loop.

Per step (Tyagi 2025, Eq. 2: t_step = t_c + t_mov + [i % H == 0] t_sync):
  data (fetch + host->device: t_data, the paper's t_mov) -> forward/backward, optionally in
  micro-batches of scaling.small_batch (t_compute) -> emulated slowdown (t_straggle) ->
  compression (t_compress, Eq. 9) and gradient sync (BSP, t_sync; the per-layer statistics of the
  noise scale travel in the same allreduce) -> gradient transform (Eq. 5-8, scaling/transform.py;
  t_teacher) -> optimizer step -> parameter sync (FedAvg, t_sync) -> log one HDF5 row.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .batching.dynamic import DynamicBatcher
from .config import Config, ConfigError, global_batch, uses_micro_batches
from .data import ClientLoader, eval_batches, load_dataset, partition_indices
from .files import atomic_path, write_json_atomic
from .models import ModelError, build_model
from .optim import build_optimizer, lr_at, set_lr_
from .precision import LossScaler, autocast
from .run.checkpoint import latest_checkpoint, load_latest_valid, save_checkpoint, set_rng_state
from .run.rundir import commit_run_dir, prepare_run_dir, rank_file
from .run.stopping import NonFiniteStop, Preempted, StopAgreement, nonfinite_quantity
from .scaling.noise_scale import layer_sq_norms
from .scaling.teacher_pretrain import pretrain_draw, pretrain_teacher
from .scaling.transform import GradTransform, scaling_warnings
from .sync import build_sync
from .telemetry import RankLog, StepTimer


class Trainer:
    """Everything that can fail on bad input is built in ``__init__``; nothing is written before
    ``run()``, so a bad config or a missing dataset leaves no file behind."""

    def __init__(self, cfg: Config, comm, signals=None):
        self.cfg, self.comm = cfg, comm
        self.stops = StopAgreement(comm, signals)  # preemption signals and non-finite values (run/stopping.py)
        self.nonfinite = cfg.train.nonfinite
        # nothing to agree on without signals to catch and without the guard
        self.agreeing = bool(cfg.run.preempt_signals) or self.nonfinite != "ignore"
        self._agreed_at = -1
        self.device = comm.pick_device()
        # first, before anything that may fail on one rank only: choosing the backend is collective
        self.backend = comm.start_backend(cfg.dist.backend, cfg.dist.timeout_s)
        comm.wait_poll_s = cfg.sync.wait_poll_us * 1e-6
        seed = cfg.run.seed
        self.plan = None
        if cfg.batching.plan_at_start:  # before any seeding below: probes draw random batches
            from .plan.recommend import plan_rank

            budget = cfg.batching.memory_budget_gb * 1e9 or None
            self.plan = plan_rank(cfg, comm, budget, list(cfg.batching.plan_probes), [],
                                  rounds=2, repeats=2)
        bundle = load_dataset(cfg.data, seed)
        self.test_set = bundle.test
        parts = partition_indices(bundle.train_labels, comm.world_size, cfg.data.partition, seed,
                                  cfg.data.labels_per_client, cfg.data.alpha)
        self.partition_sizes = [len(p) for p in parts]
        # in-memory datasets live on the rank's device: batches are gathered there, no per-step copy
        self.loader = ClientLoader(bundle.train, parts[comm.rank], cfg.train.batch_size, seed,
                                   comm.rank, cfg.data.workers, device=self.device)
        torch.manual_seed(seed)  # same init everywhere; rank 0's copy is broadcast anyway
        self.model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes,
                                 cfg.model.norm).to(self.device)
        _probe(self.model, cfg, bundle.input_shape, self.device)
        self.model.train()
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = cfg.train.precision
        self.scaler = LossScaler() if self.precision == "fp16" else None
        torch.manual_seed(seed * 1_000_003 + comm.rank + 1)  # independent dropout/augmentation per client
        self.sync = build_sync(cfg, comm, self.model)
        self.opt = build_optimizer(cfg.train, self.sync.params)
        self.global_batch = global_batch(cfg, comm.world_size)
        self.batcher = None
        if cfg.batching.mode == "dynamic":
            self.batcher = DynamicBatcher(cfg.batching, comm.world_size, self.global_batch)
            self.loader.batch_size = self.batcher.sizes[comm.rank]
        self.slowdown = float(cfg.hetero.slowdown[comm.rank]) if cfg.hetero.slowdown else 1.0
        self.micro = cfg.scaling.small_batch if uses_micro_batches(cfg, comm.world_size) else 0
        self._micro_buf: torch.Tensor | None = None
        self.transform = GradTransform(cfg, comm, self.sync.params, self.global_batch, self.device)
        self.exchanges_stats = comm.world_size > 1 and cfg.sync.mode in ("bsp", "postlocal")
        self.start_step = 0
        self.skips = 0  # updates dropped on a non-finite value (train.nonfinite='skip')
        self._last_checkpoint: int | None = None
        self.elapsed = 0.0  # wall seconds of earlier segments of a resumed run
        for warning in scaling_warnings(cfg) if comm.rank == 0 else ():
            print(f"lbfl: warning: {warning}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------ setup
    def _restore(self, step: int, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        if self.scaler is not None:
            self.scaler.load_state_dict(ck["scaler"])
        self.opt.load_state_dict(ck["optimizer"])
        self.loader.load_state_dict(ck["loader"])
        self.sync.load_state_dict(ck["sync"])
        self.transform.load_state_dict(ck["transform"])
        self.elapsed = ck["elapsed"]
        if self.batcher is not None and ck.get("batcher"):
            self.batcher.load_state_dict(ck["batcher"])
            self.loader.batch_size = self.batcher.sizes[self.comm.rank]
        set_rng_state(ck["rng"])
        self.start_step = step

    def _checkpoint(self, step: int, t0: float) -> None:
        # never write a checkpoint from a state some rank found non-finite
        if self.nonfinite != "ignore" and not all(bool(torch.isfinite(t).all()) for t in self.sync.state):
            self.stops.note_nonfinite(step - 1, "parameters")
        self._agree(step - 1, force=self.nonfinite != "ignore")
        if self.stops.nonfinite is not None:
            return
        save_checkpoint(self.comm, self.cfg.run.out_dir, step, {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "loader": self.loader.state_dict(), "sync": self.sync.state_dict(),
            "transform": self.transform.state_dict(), "elapsed": self.elapsed + time.time() - t0,
            "batcher": self.batcher.state_dict() if self.batcher is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }, config=self.cfg.to_dict())
        self._last_checkpoint = step

    # ------------------------------------------------------------------------- pipeline
    def _backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and gradients of the local batch; with micro-batching (``scaling.small_batch``)
        also the [m, n] micro-batch gradients, whose mean is left in ``.grad`` (same FLOPs, more memory)."""
        params = self.sync.params
        self.opt.zero_grad(set_to_none=True)
        if not self.micro:
            loss = self._loss(x, y)
            self._scaled(loss).backward()
            return loss.detach(), None
        sizes = self.transform.sizes
        chunks = list(zip(x.split(self.micro), y.split(self.micro)))
        shape = (len(chunks), sum(sizes))
        if self._micro_buf is None or self._micro_buf.shape != shape:  # reused: allocating m x n per step
            self._micro_buf = torch.empty(shape, device=x.device)      # page-faults on CPU
        flats = self._micro_buf
        loss = torch.zeros((), device=x.device)
        for j, (xs, ys) in enumerate(chunks):
            self.opt.zero_grad(set_to_none=False)
            lj = self._loss(xs, ys)
            self._scaled(lj).backward()
            loss += lj.detach()
            for v, p in zip(flats[j].split(sizes), params):
                if p.grad is None:  # a layer this micro-batch did not reach
                    v.zero_()
                else:
                    v.copy_(p.grad.reshape(-1))
        for v, p in zip(flats.mean(0).split(sizes), params):
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.copy_(v.view_as(p))
        if self.scaler is not None:  # .grad stays scaled until the step unscales it; the pairs do not
            flats.mul_(1.0 / self.scaler.scale)
        return loss / len(chunks), flats

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            out = self.model(x)
        return F.cross_entropy(out.float(), y)

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale_loss(loss) if self.scaler is not None else loss

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4 and self.memory_format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_step(self, step: int, timer: StepTimer) -> dict:
        cfg = self.cfg
        lr = lr_at(cfg.train, step, self.global_batch)
        set_lr_(self.opt, lr)
        if self.stops.signals is not None:
            self.stops.signals.step = step
        timer.start()
        x, y = self._to_device(*self.loader.next_batch())
        timer.lap("data")
        b = int(y.shape[0])

        self.sync.begin_step(b)  # an overlapping exchange starts buckets during backward (model in train mode)
        loss, micro = self._backward(x, y)
        t_fb = timer.lap("compute")
        if self.slowdown > 1:  # emulated slower device: its own column, never inside t_compute
            time.sleep((self.slowdown - 1) * t_fb)
        timer.lap("straggle")
        layer_sq = layer_sq_norms([p.grad for p in self.sync.params])  # one pass: the total and the stats
        if self.scaler is not None:
            layer_sq = layer_sq / self.scaler.scale ** 2
        local_sq = float(layer_sq.sum())
        loss_value = float(loss.item())
        bad = None  # fp16: a non-finite step is the loss scaler's business (skip it, lower the scale)
        if self.nonfinite != "ignore" and self.scaler is None:
            bad = nonfinite_quantity(loss_value, local_sq)
            if bad is not None and self.nonfinite == "stop":
                self.stops.note_nonfinite(step, bad)
        stats = self.transform.local_stats(layer_sq, b) if self.exchanges_stats else None
        timer.lap("compute")

        # compression (Eq. 9) happens inside the synchroniser, which laps "compress" and "sync"
        res_g = self.sync.sync_grads(step, b, timer, stats=stats)
        timer.lap("sync")
        # gradient transform (Eq. 5-8) on the gradient used for the update: BSP's synchronised one
        collective = res_g.synced and self.comm.world_size > 1
        if collective or self.comm.world_size == 1:  # the ranks meet here anyway: agree on stops
            self._agree(step, bad is not None)
            drop = self.stops.any_bad and self.nonfinite != "ignore"
        else:  # FedAvg between averages: each client drops its own non-finite update
            drop = bad is not None
        finite = True
        if self.scaler is not None:  # on the synchronised gradient under BSP: the same decision everywhere
            finite = self.scaler.unscale_([p.grad for p in self.sync.params])
            self.scaler.update(finite)
        if finite and not drop:
            # the local norms still describe the gradient unless a synchronisation replaced it
            info = self.transform.apply(step, b, res_g.stats, micro, collective, timer,
                                        layer_sq=None if collective else layer_sq)
            self.opt.step()
        else:
            info = self.transform.skipped()  # fp16 overflow: under BSP every rank skips this step
        timer.lap("compute")
        res_p = self.sync.sync_params(step, b, timer)
        timer.lap("sync")
        every = self.cfg.run.preempt_check_every
        if res_p.synced or (every and (step + 1) % every == 0):
            self._agree(step)
        res = res_g if res_g.synced else res_p
        busy = timer.get("compute") + timer.get("straggle")
        if self.batcher is not None:
            self.batcher.observe(b, busy)
        return {
            "step": step, "epoch": self.loader.epoch, "batch_size": b, "lr": lr, "loss": loss_value,
            "t_data": timer.get("data"), "t_compute": timer.get("compute"), "t_compress": timer.get("compress"),
            "t_sync": timer.get("sync"), "t_step": sum(timer.times.values()),
            "grad_norm_sq": local_sq, **info,
            "synced": int(res_g.synced or res_p.synced), "bytes_sent": res_g.bytes_sent + res_p.bytes_sent,
            "density_actual": res.density, "residual_norm_sq": res.residual_norm_sq,
            "t_straggle": timer.get("straggle"), "throughput": b / busy if busy > 0 else 0.0,
            "nonfinite_skip": int(drop and self.nonfinite == "skip"),
        }

    def _agree(self, step: int, step_bad: bool = False, force: bool = False) -> None:
        """Agree on pending stops once per step, or again with ``force`` (collective; run/stopping.py)."""
        if not self.agreeing:
            return
        if force or self._agreed_at != step:
            self.stops.agree(step_bad)
            self._agreed_at = step

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the global (sample-weighted average) model; collective."""
        with self.sync.global_view(self.sync.eval_weight(self.cfg.train.batch_size)):
            self.model.eval()
            acc = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
            for x, y in eval_batches(self.test_set, self.comm.rank, self.comm.world_size,
                                     self.cfg.train.eval_batch, self.cfg.data.workers, device=self.device):
                x, y = self._to_device(x, y)
                with autocast(self.precision, self.device):
                    out = self.model(x).float()
                acc[0] += F.cross_entropy(out, y, reduction="sum").double()
                acc[1] += (out.argmax(1) == y).sum().double()
                acc[2] += y.numel()
            self.comm.allreduce_(acc)
            self.model.train()
        return float(acc[0] / acc[2]), float(acc[1] / acc[2])

    # ----------------------------------------------------------------------------- loop
    def _apply_plan_limits(self) -> None:
        """Collective: each rank's planned largest permissible batch caps its dynamic batch. Every rank
        sees the same gathered limits, so an infeasible global batch is refused identically everywhere."""
        limits = self.comm.allgather_obj(self.plan["max_batch"])
        cap = self.cfg.batching.max_batch or None
        merged = [m if cap is None else (cap if m is None else min(m, cap)) for m in limits]
        small = [r for r, m in enumerate(merged) if m is not None and m < self.cfg.batching.min_batch]
        if small:
            raise ConfigError(f"batching.memory_budget_gb={self.cfg.batching.memory_budget_gb}: the planned "
                              f"largest permissible batches {merged} are below batching.min_batch="
                              f"{self.cfg.batching.min_batch} on ranks {small}")
        if all(m is not None for m in merged) and sum(merged) < self.global_batch:
            raise ConfigError(f"batching.global_batch={self.global_batch} does not fit the planned largest "
                              f"permissible batches {merged} (sum {sum(merged)})")
        self.batcher.set_max_batch(merged)
        self.loader.batch_size = self.batcher.sizes[self.comm.rank]

    def _resume_or_start(self) -> int | None:
        """Collective: lock and check the run directory, load the newest checkpoint every rank can
        read (falling back past damaged ones), or start from rank 0's initial model."""
        cfg, comm = self.cfg, self.comm
        decision = prepare_run_dir(cfg, comm)
        resume_step = None
        if decision.resume_steps:
            resume_step, payload, warnings = load_latest_valid(comm, cfg.run.out_dir, decision.resume_steps)
            if resume_step is None:  # identical on every rank: the load results were exchanged
                raise ConfigError(f"run.resume: no checkpoint in {cfg.run.out_dir} can be loaded ({warnings[-1]})")
            self._restore(resume_step, payload)
        else:
            self.sync.broadcast_initial()
        commit_run_dir(cfg, comm, decision, fresh=resume_step is None)
        if comm.rank == 0:
            start = f"resuming at step {resume_step}" if resume_step is not None else "starting at step 0"
            print(f"lbfl: {start} of {cfg.train.steps} in {cfg.run.out_dir}", file=sys.stderr, flush=True)
        return resume_step

    def _pretrain_teacher(self) -> None:
        """Collective under BSP: scaling.teacher_pretrain_steps teacher steps at the initial weights
        (scaling/teacher_pretrain.py); model, buffers, RNG and training stream stay as they were."""
        cfg, teacher, sync = self.cfg, self.transform.teacher, self.cfg.sync
        if teacher is None or not cfg.scaling.teacher_pretrain_steps:
            return
        draw = pretrain_draw(self.loader, cfg.run.seed, self.comm.rank, self.device, self._to_device)
        bsp_first = sync.mode == "bsp" or (sync.mode == "postlocal" and sync.switch_step > 0)  # step 0 synchronises
        collective = self.comm.world_size > 1 and bsp_first
        done = pretrain_teacher(teacher, self.model, self.sync.params, self._loss, draw,
                                cfg.scaling.teacher_pretrain_steps, cfg.train.batch_size, self.comm, collective,
                                self.transform._average, self.scaler.scale if self.scaler is not None else 1.0)
        if self.comm.rank == 0:
            print(f"lbfl: teacher pretrained for {done} of {cfg.scaling.teacher_pretrain_steps} steps",
                  file=sys.stderr, flush=True)

    def run(self) -> dict | None:
        cfg, comm = self.cfg, self.comm
        if self.plan is not None and self.batcher is not None:
            self._apply_plan_limits()
        resume_step = self._resume_or_start()
        if resume_step is None:  # a resumed run has its teacher in the checkpoint
            self._pretrain_teacher()
        self._last_checkpoint = resume_step
        log = RankLog(rank_file(cfg.run.out_dir, comm.rank), rank=comm.rank, world_size=comm.world_size,
                      config_json=cfg.to_json(), device=str(self.device),
                      flush_every=cfg.telemetry.flush_every, resume_step=resume_step,
                      extra_attrs=self._data_plane_attrs(), plan=self.plan)
        timer = StepTimer(self.device)
        bar = _progress(comm.rank == 0, cfg.train.steps, self.start_step)
        t0 = time.time()
        last = {}
        try:
            for step in range(self.start_step, cfg.train.steps):
                row = self.train_step(step, timer)
                log.log_step(**row)
                self.skips += row["nonfinite_skip"]
                done = step + 1
                self._stop_if_nonfinite(log, t0)
                if (cfg.train.eval_every and done % cfg.train.eval_every == 0) or done == cfg.train.steps:
                    test_loss, test_acc = self.evaluate()
                    log.log_eval(step, test_loss, test_acc)
                    last = {"acc": test_acc}
                if cfg.run.checkpoint_every and done % cfg.run.checkpoint_every == 0:
                    log.flush()
                    self._checkpoint(done, t0)
                    self._stop_if_nonfinite(log, t0)
                if self.stops.preempt is not None and done < cfg.train.steps:
                    self._preempt(log, done, t0)
                if self.batcher is not None and done < cfg.train.steps:
                    new = self.batcher.step_end(step, comm)
                    if new is not None:
                        self.loader.batch_size = new[comm.rank]
                bar.update(row["loss"], last.get("acc"))
            log.flush()
            done = cfg.train.steps
            if cfg.run.checkpoint_every and done % cfg.run.checkpoint_every and self.start_step < done:
                self._checkpoint(done, t0)  # the end is always resumable (e.g. to train longer)
            self._agree(done - 1)
            self._stop_if_nonfinite(log, t0)
            self._save_global_model()
            summary = self._finish(log, t0, "completed")
        finally:
            bar.close()
            log.close()
            self.loader.close()
        return summary

    def _finish(self, log: RankLog, t0: float, outcome: str, **extra) -> dict | None:
        """Collective: rank 0 writes summary.json (also for a stopped run) and returns it."""
        wall = self.elapsed + time.time() - t0
        samples = self.comm.allgather_obj(self.loader.samples_seen)
        sizes = self.comm.allgather_obj(self.loader.batch_size)
        skips = self.comm.allgather_obj(self.skips)
        if self.comm.rank != 0:
            return None
        return self._summary(log, wall, int(sum(samples)), sizes, outcome=outcome, nonfinite_skips=int(max(skips)),
                             **extra)

    def _stop_if_nonfinite(self, log: RankLog, t0: float) -> None:
        """After an agreement found a non-finite value (train.nonfinite='stop'): every rank stops here;
        nothing is written from the non-finite state, earlier checkpoints stay."""
        if self.stops.nonfinite is None:
            return
        step, quantity, rank = self.stops.nonfinite
        log.flush()
        latest = latest_checkpoint(self.cfg.run.out_dir)
        self._finish(log, t0, "nonfinite_stop", nonfinite={"step": step, "quantity": quantity, "rank": rank})
        raise NonFiniteStop(step, quantity, rank, latest["step"] if latest else None)

    def _preempt(self, log: RankLog, done: int, t0: float) -> None:
        """Every rank agreed on a preemption signal: checkpoint this step (unless just done) and stop."""
        log.flush()
        if self._last_checkpoint != done:
            self._checkpoint(done, t0)
            self._stop_if_nonfinite(log, t0)
        raise Preempted(done, *self.stops.preempt)

    def _data_plane_attrs(self) -> dict:
        """Rank-file attributes: how this run's tensors travelled."""
        ex = getattr(self.sync, "exchange", None)
        return {"dense_bytes": self.sync.dense_bytes, "backend": self.backend,
                "staging": self.comm.staging(self.device), "exchange": self.sync.exchange_name,
                "buckets": int(getattr(ex, "n_buckets", 1)), "precision": self.precision,
                "channels_last": int(self.cfg.train.channels_last)}

    def _save_global_model(self) -> None:
        """Rank 0 writes the final global (averaged) model's state_dict to ``model.pt``; collective."""
        with self.sync.global_view(self.sync.eval_weight(self.cfg.train.batch_size)):
            if self.comm.rank == 0:
                with atomic_path(Path(self.cfg.run.out_dir) / "model.pt") as tmp:
                    torch.save(self.model.state_dict(), tmp)

    def _summary(self, log: RankLog, wall: float, samples: int, sizes: list[int], **outcome) -> dict:
        cfg = self.cfg
        ev = {k: log.f["eval"][k][:] for k in ("step", "test_loss", "test_acc")}
        nan = float("nan")
        best = int(np.argmax(ev["test_acc"])) if len(ev["test_acc"]) else None
        summary = {
            "name": cfg.run.name or Path(cfg.run.out_dir).name, **outcome,
            "final_test_acc": float(ev["test_acc"][-1]) if best is not None else nan,
            "final_test_loss": float(ev["test_loss"][-1]) if best is not None else nan,
            "best_test_acc": float(ev["test_acc"][best]) if best is not None else nan,
            "best_step": int(ev["step"][best]) if best is not None else -1,
            "steps": cfg.train.steps, "world_size": self.comm.world_size, "global_batch": self.global_batch,
            "sync_mode": cfg.sync.mode, "period": cfg.sync.period, "dataset": cfg.data.name,
            "partition": cfg.data.partition, "model": cfg.model.name, "partition_sizes": self.partition_sizes,
            "wall_time_s": wall, "samples": samples, "samples_per_s": samples / wall if wall > 0 else 0.0,
            "batching": cfg.batching.mode, "final_batch_sizes": [int(b) for b in sizes],
            "batch_changes": self.batcher.changes if self.batcher is not None else 0,
            "teacher_pretrain_steps": self.transform.teacher.pretrained_steps if self.transform.teacher else 0,
        }
        write_json_atomic(Path(cfg.run.out_dir) / "summary.json", summary, indent=2)
        return summary


def _probe(model: torch.nn.Module, cfg: Config, shape: tuple, device: torch.device) -> None:
    """One evaluation-mode forward pass of a single zero sample, so that a model that cannot take the
    dataset's input shape is refused before anything is written (no state changes in eval mode)."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"model.name={cfg.model.name!r} cannot run on data.name={cfg.data.name!r} "
                         f"inputs of shape {list(shape)}: {first}") from None


class _progress:
    """tqdm bar on rank 0 (plain lines when tqdm is missing or stderr is not a terminal)."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        self.enabled = enabled
        self.total, self.n = total, initial
        self.every = max(1, total // 20)
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def update(self, loss: float, acc: float | None) -> None:
        self.n += 1
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}"}
            if acc is not None:
                post["acc"] = f"{acc:.4f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.n % self.every == 0 or self.n == self.total):
            acc_s = f" test_acc {acc:.4f}" if acc is not None else ""
            print(f"step {self.n}/{self.total} loss {loss:.4f}{acc_s}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
