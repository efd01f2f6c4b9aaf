"""The trainer's gradient-transform stage (Tyagi 2025, Eq. 5a-c): G~ = A(G), then w <- w - eta G~.

Runs after the gradient synchronisation, so in BSP it sees the synchronised gradient (every rank
applies the same G~) and in FedAvg each client's local gradient. Per step it

1. updates the noise-scale estimate (McCandlish et al. 2018, App. A; :mod:`.noise_scale`) from the
   BSP statistics summed with the gradients, or from micro-batches of the local batch;
2. computes the gradient change of Eq. 8 (optionally EWMA-smoothed) and the phase (:mod:`.critical`);
3. applies ``scaling.method``: none; step, U(X) of Eq. 6 (:mod:`.step`); gain, the per-layer r_l of
   :mod:`.noise_scale` (the principled Eq. 7); teacher, the learned A of Eq. 5b (:mod:`.teacher`),
   trained on nested pairs of the local batch (b_local = train.batch_size) and applied to the
   gradient of B samples it transforms (BSP: the global batch; FedAvg: b_local), which sets the
   variance it injects (:mod:`.teacher`, "Calibration"); adascale, AdaScale's gain r_t
   (:mod:`.adascale`), which leaves the gradient alone and multiplies the learning rate of the update
   (:attr:`GradTransform.lr_scale`), its progress tau reading the schedule and ending the run;
   teacher v2 (``scaling.teacher_noise`` fisher, diagonal or isotropic; :mod:`.noise_inject`) added its
   noise to the local gradient before the exchange (:meth:`GradTransform.inject_`), and the squared
   norms it summed with the statistics are taken off |G_l|^2 before steps 1 and 2 read it.
"""
from __future__ import annotations

import math

import torch

from ..config import injects_noise
from ..optim.grads import grads_or_zeros_
from ..telemetry.timers import StepTimer
from .adascale import AdaScale
from .critical import GradChange, is_critical
from .noise_inject import SmallBatchNoise
from .noise_scale import NoiseScale, layer_sq_norms
from .stats import GradStats
from .step import scale_grads_, step_factor
from .teacher import Teacher, cosine


class GradTransform:
    def __init__(self, cfg, comm, params: list[torch.Tensor], global_batch: int, device):
        self.sc, self.comm, self.params = cfg.scaling, comm, params
        self.global_batch = global_batch
        self.device = torch.device(device)
        self.sizes = [p.numel() for p in params]
        self.detector = GradChange(self.sc.ewma)
        self.noise = NoiseScale(len(params), self.sc.noise_ema)
        self.teacher = None
        self.teacher_left = 0
        self.injector = None  # teacher v2 (noise_inject.py)
        self.injected = (1.0, 0.0)  # its s_t and time of this step (inject_)
        if injects_noise(cfg):
            self.injector = SmallBatchNoise(self.sc, cfg.train.steps, self.sizes, cfg.run.seed, comm.rank, device)
        elif self.sc.method == "teacher":
            self.teacher = Teacher([p.numel() for p in params], device, self.sc.teacher_chunk,
                                   self.sc.teacher_hidden, self.sc.teacher_lr, seed=cfg.run.seed,
                                   b_small=self.sc.small_batch, ema=self.sc.noise_ema)
            self.teacher_left = self.sc.teacher_steps
        self.adascale = AdaScale(cfg.train.base_batch, cfg.train.steps) if self.sc.method == "adascale" else None
        self.lr_scale = 1.0  # the update's lr factor (AdaScale's r_t), read by the update stage
        self.was_critical = False
        self._exchanges: dict = {}  # teacher averaging under BSP, one exchange per tensor-list shape

    # ------------------------------------------------------------------------------ inputs
    def _update_noise(self, summed: torch.Tensor | None, micro: torch.Tensor | None, b: int,
                      big_sq: torch.Tensor, small: tuple | None = None) -> float:
        """One noise-scale update; returns the batch of the gradient the transform sees."""
        W = self.comm.world_size
        if summed is not None:  # BSP: mean local |g_i|^2 at the harmonic-mean b, against the synced G
            n = len(self.params)
            small_sq = summed[:n].to(big_sq) / W
            b_small = W / float(summed[n])
            self.noise.update(small_sq, big_sq, b_small, self.global_batch)
            return float(self.global_batch)
        if micro is not None:  # micro-batches of the local batch against their mean
            small_sq = torch.stack([micro_layer.double().pow(2).sum(1).mean() for micro_layer in
                                    micro.split(self.sizes, dim=1)])
            self.noise.update(small_sq, big_sq, self.sc.small_batch, b)
        elif small is not None:  # accumulated micro-batches (train.micro_batch): their mean |g_j|^2
            self.noise.update(small[0].to(big_sq), big_sq, small[1], b)
        return float(b)

    def _unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of one flat gradient vector (a row of the micro-batch matrix)."""
        return [v.view_as(p) for v, p in zip(flat.split(self.sizes), self.params)]

    # ------------------------------------------------------------------------------- apply
    def schedule_step(self, step: int) -> float:
        """Where the lr schedule is read at ``step``: AdaScale's progress tau, else the step itself."""
        return self.adascale.tau if self.adascale is not None else step

    @property
    def finished(self) -> bool:
        """AdaScale's end of training (tau >= train.steps); never for the other methods."""
        return self.adascale is not None and self.adascale.finished

    def after_update(self) -> None:
        """Once the optimizer applied this step's update: AdaScale advances tau by r_t."""
        if self.adascale is not None:
            self.adascale.advance()

    def skipped(self) -> dict:
        """The logged values of a step that applied no update (an fp16 overflow): scale factor 0."""
        return {"grad_change": math.nan, "phase": int(self.was_critical), "noise_scale": self.noise.b_simple(),
                "scale_factor": 0.0, "t_teacher": 0.0, "teacher_nll": math.nan, "teacher_cos": math.nan,
                "teacher_noise_sq": math.nan}

    def inject_(self, stats: GradStats, averaged: bool, ranks: int, global_batch: int) -> None:
        """Teacher v2, before the gradient exchange: add this client's xi_c to ``.grad`` (noise_inject.py,
        with B, W = ``global_batch``, ``ranks`` when the exchange ``averaged`` the gradients, else the local
        batch and 1); keeps s_t and the time taken for the step's row, and puts the per-layer q_c the
        exchange sums with the statistics in ``stats.noise_sq`` (nothing without teacher v2)."""
        if self.injector is None:
            return
        clock = StepTimer(self.device)
        clock.start()
        grads = grads_or_zeros_(self.params)  # a layer this batch did not reach: the noise still reaches it
        b = stats.batch
        b_apply, w = (global_batch, ranks) if averaged else (b, 1)
        s, q = self.injector.add_(grads, stats.micro, stats.step, self.was_critical, b, b_apply, w)
        stats.noise_sq = q
        self.injected = (s, clock.lap("teacher"))

    def apply(self, stats: GradStats) -> dict:
        """Transform the gradients in ``self.params[i].grad`` in place; returns the logged values,
        ``t_teacher`` (the teacher's share of the call, timed here) among them.

        From ``stats`` (scaling/stats.py): ``summed``, the BSP statistics summed over ranks (None when
        none were exchanged); ``micro``, the [m, n] micro-batch gradients of the local batch (or None);
        ``collective``, all ranks see the same gradient this step (BSP), so teacher training averages
        over ranks; ``layer_sq``, the per-layer squared norms of the current gradients when known.
        """
        step, b, summed, micro, collective = stats.step, stats.batch, stats.summed, stats.micro, stats.collective
        grads = [p.grad for p in self.params]
        # one pass, shared by the noise scale, Eq. 8 and the teacher; ``layer_sq`` when the caller
        # already has the per-layer squared norms of exactly these gradients (not synchronised since)
        sq = stats.layer_sq if stats.layer_sq is not None else layer_sq_norms(grads)
        injected_sq = self._injected_sq(stats, sq)
        small = (stats.small_sq, stats.small_batch) if stats.small_sq is not None else None
        b_large = self._update_noise(summed, micro, b, sq, small)
        delta = self.detector.update(float(sq.sum()))
        critical = is_critical(delta, self.sc.threshold)
        out = {**self.skipped(), "grad_change": delta, "phase": int(critical), "noise_scale": self.noise.b_simple(),
               "scale_factor": 1.0}
        method = self.sc.method
        if method == "step":
            out["scale_factor"] = step_factor(critical, self.sc.factor, self.sc.polarity)
            scale_grads_(grads, out["scale_factor"])
        elif method == "gain":
            r = self.noise.gain(self.sc.small_batch, b_large)
            with torch.no_grad():
                for g, rl in zip(grads, r.tolist()):
                    g.mul_(rl)
            out["scale_factor"] = float(r.mean())
        elif method == "adascale":
            self.lr_scale = out["scale_factor"] = self.adascale.update(self.noise, b_large)
        elif method == "teacher" and self.injector is not None:
            out["scale_factor"], out["t_teacher"] = self.injected
            out["teacher_noise_sq"] = injected_sq
        elif method == "teacher":
            clock = StepTimer(self.device)
            clock.start()
            clock.lap("before")  # the work queued so far is not the teacher's
            self._teacher_step(step, b, grads, sq, micro, critical, collective, out)
            out["t_teacher"] = clock.lap("teacher")
        self.was_critical = critical
        return out

    def _injected_sq(self, stats: GradStats, sq: torch.Tensor) -> float:
        """Teacher v2: the estimate sum_c q_c of |xi_bar|^2, the injected noise in ``.grad``. Under an
        exchange (``sq`` measured after it) the summed q_c,l are taken off ``sq`` in place, which leaves
        an unbiased estimate of the clean |G_l|^2 (noise_inject.py, "Statistics")."""
        if self.injector is None or stats.noise_sq is None:
            return math.nan
        n = len(self.params)
        if stats.collective and stats.summed is not None:
            q = stats.summed[n + 1:].to(sq)
            sq.sub_(q)
            return float(q.sum())
        return float(stats.noise_sq.sum())

    def _teacher_step(self, step, b, grads, sq, micro, critical, collective, out) -> None:
        sc, teacher = self.sc, self.teacher
        onset = critical and not self.was_critical and teacher.trained_steps >= sc.teacher_steps
        refresh = sc.teacher_refresh and step > 0 and step % sc.teacher_refresh == 0
        if (onset or refresh) and self.teacher_left == 0:
            self.teacher_left = sc.teacher_steps  # retrain: a critical phase begins, or the refresh period
        m = micro.shape[0]
        local_big = self._unflatten(micro.mean(0))
        held_out = self._unflatten(micro[m - 1])  # never trained on: the cosine is out of sample
        if self.teacher_left > 0:
            smalls = [self._unflatten(micro[j]) for j in range(m - 1)]
            # nested pairs: micro-batches of b_s inside the local batch of m b_s samples
            out["teacher_nll"] = teacher.train_step(local_big, smalls, m * sc.small_batch, nested=True,
                                                    average_grads=self.average if collective else None)
            self.teacher_left -= 1
        if teacher.trained_steps < sc.teacher_steps:
            return  # still in the initial training (pretraining included): the gradient is left as it is
        # applied to the synchronised gradient of the global batch under BSP, to the local one otherwise
        ratios, new_sq = teacher.sample_(grads, step, self.global_batch if collective else b, sq)
        out["scale_factor"] = float(ratios.mean())
        out["teacher_cos"] = cosine(grads, held_out, a_sq=float(new_sq.sum()))

    def average(self, tensors: list[torch.Tensor]) -> None:
        """tensors <- their mean over the ranks, through a dense exchange (one buffer per list shape:
        the teacher's sigma^2 estimate and its gradients; reused every step)."""
        key = tuple((t.numel(), t.dtype) for t in tensors)
        if key not in self._exchanges:
            from ..exchange import DenseExchange

            self._exchanges[key] = DenseExchange(self.comm, tensors)
        self._exchanges[key].reduce_(tensors, 1.0)
        self._exchanges[key].unpack_(tensors)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"detector": self.detector.state_dict(), "noise": self.noise.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "teacher_left": self.teacher_left, "was_critical": self.was_critical,
                "adascale": self.adascale.state_dict() if self.adascale is not None else None,
                "injector": self.injector.state_dict() if self.injector is not None else None}

    def load_state_dict(self, d: dict) -> None:
        self.detector.load_state_dict(d["detector"])
        self.noise.load_state_dict(d["noise"])
        if self.teacher is not None and d.get("teacher"):
            self.teacher.load_state_dict(d["teacher"])
        self.teacher_left, self.was_critical = int(d["teacher_left"]), bool(d["was_critical"])
        if self.adascale is not None and d.get("adascale") is not None:
            self.adascale.load_state_dict(d["adascale"])
        if self.injector is not None and d.get("injector") is not None:
            self.injector.load_state_dict(d["injector"])


def scaling_warnings(cfg) -> list[str]:
    """One-line start-up warnings about the scaling config (the trainer prints them on rank 0).

    Adam divides each coordinate's first moment by the root of its second moment, so a gradient scaled
    by a constant c (U(X) of Eq. 6/7 within a phase, or the per-layer gain r_l) gives the same update
    once both moments have adapted: the scale acts only through their transients after it changes.
    LARS divides each layer's gradient by its norm (the trust ratio), so a per-layer constant scale
    cancels there at once (exactly without weight decay); LAMB adds that on top of Adam's invariance."""
    sc, opt = cfg.scaling, cfg.train.optimizer
    if sc.method not in ("step", "gain"):
        return []
    what = "U(X)" if sc.method == "step" else "gain"
    if opt in ("adam", "adamw"):
        return [f"scaling.method={sc.method!r} with train.optimizer={opt!r}: Adam is invariant to a constant "
                f"gradient scale, so {what} scaling changes the update only through the moment estimates' "
                "transients"]
    if opt in ("lars", "lamb"):
        return [f"scaling.method={sc.method!r} with train.optimizer={opt!r}: the layer-wise trust ratio "
                f"normalises each layer's update, so {what} scaling of a layer's gradient by a constant "
                "changes almost nothing (only the weight-decay share and the excluded bias/norm tensors)"]
    return []
