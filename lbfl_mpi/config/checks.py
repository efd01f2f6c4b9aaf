"""Validation of a loaded :class:`~lbfl_mpi.config.schema.Config`: every field generically against the
bounds and choices declared in its metadata, then the rules that tie keys together. Runs once, before MPI
collectives, training or any file write; every problem raises ConfigError naming the key."""
from __future__ import annotations

import dataclasses
import math
import signal
from typing import Any

from .fields import (
    TYPE_OK,
    TYPE_WORDS,
    UNCATCHABLE_SIGNALS,
    ConfigError,
    choice_text,
    field_type,
    num_text,
    range_text,
    shown,
)
from .schema import Config, global_batch, injects_noise, num_classes, sections, uses_micro_batches


def _check(cond: bool, key: str, value: Any, want: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={shown(value)}: {want}")


def _in_range(v: float, meta) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (v <= lo if meta.get("min_open") else v < lo):
        return False
    return hi is None or (v < hi if meta.get("max_open") else v <= hi)


def _check_number(v: Any, typ: str, meta) -> str | None:
    """Why ``v`` (an int or float key, or one list element) is not allowed; None when it is.

    A float bounded on both sides is reported as its interval ("in (0, 1]"); otherwise the message
    names the side ``v`` is on ("> 0"), so that an int's sanity cap does not crowd the message."""
    if not TYPE_OK[typ](v):
        return f"expected {typ}"
    rng = range_text(meta, typ).removesuffix(", finite")
    if typ == "float" and not math.isfinite(v):
        return "must be finite" + (f" and {'in ' if rng[:1] in ('[', '(') else ''}{rng}" if rng else "")
    if _in_range(v, meta):
        return None
    lo, hi = meta.get("min"), meta.get("max")
    if typ == "float" and lo is not None and hi is not None:
        return f"must be in {rng}"
    if lo is not None and not _in_range(v, {"min": lo, "min_open": meta.get("min_open")}):
        return ("must be > " if meta.get("min_open") else "must be >= ") + num_text(lo)
    return ("must be < " if meta.get("max_open") else "must be <= ") + num_text(hi)


def _check_field(key: str, v: Any, f: dataclasses.Field) -> None:
    """The checks every key's metadata declares: type, choices, bounds (and finiteness) of numbers and
    of list elements."""
    typ, meta = field_type(f), f.metadata
    if not TYPE_OK[typ](v):
        raise ConfigError(f"{key}: expected {TYPE_WORDS.get(typ, typ)}, got {shown(v)}")
    if "choices" in meta:  # by type and value: 1 is not True, True is not "true"
        _check(any(type(v) is type(c) and v == c for c in meta["choices"]), key, v,
               "must be one of " + ", ".join(choice_text(c) for c in meta["choices"]))
    if typ in ("int", "float"):
        why = _check_number(v, typ, meta)
        _check(why is None, key, v, why or "")
    elif typ == "list" and meta.get("item") in ("int", "float"):
        for x in v:
            why = _check_number(x, meta["item"], meta)
            _check(why is None, key, v, f"element {shown(x)}: {why}")
    elif typ == "list" and meta.get("item") == "str":
        bad = [x for x in v if not isinstance(x, str)]
        _check(not bad, key, v, f"element {bad[0]!r}: expected str" if bad else "")


# keys that name a file system path: checked against what a path can be (Linux NAME_MAX, PATH_MAX)
PATH_KEYS = ("run.out_dir", "data.root")
NAME_MAX, PATH_MAX = 255, 4096


def _check_text(key: str, v: Any) -> None:
    """A string value must be Unicode text: config.toml (UTF-8 TOML) has to hold it, and a lone
    surrogate, which is how Python keeps command-line bytes that are not UTF-8, has no spelling there."""
    for x in v if isinstance(v, list) else [v]:
        if isinstance(x, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in x):
            raise ConfigError(f"{key}={shown(v)}: holds bytes that are not UTF-8 text; config values are "
                              "written to config.toml as UTF-8, so use a name that is valid UTF-8")


def check_path_text(key: str, v: str) -> None:
    """A path key: no NUL character, no component over NAME_MAX bytes, at most PATH_MAX bytes in all."""
    _check("\0" not in v, key, v, "must not contain a NUL character")
    raw = v.encode("utf-8", "surrogateescape")
    long = [c for c in raw.split(b"/") if len(c) > NAME_MAX]
    _check(not long, key, v, f"has a path component of {len(long[0]) if long else 0} bytes; file systems "
                             f"allow at most {NAME_MAX}")
    _check(len(raw) < PATH_MAX, key, v, f"is {len(raw)} bytes long; paths must be below {PATH_MAX}")


def validate(cfg: Config) -> None:
    """Type, choice and range checks for every key (from the field metadata), then the checks that
    involve several keys or a list's shape; raises ConfigError naming the first bad key."""
    for sec, cls in sections().items():
        for f in dataclasses.fields(cls):
            _check_field(f"{sec}.{f.name}", getattr(getattr(cfg, sec), f.name), f)
            _check_text(f"{sec}.{f.name}", getattr(getattr(cfg, sec), f.name))
    for key in PATH_KEYS:
        sec, name = key.split(".")
        check_path_text(key, getattr(getattr(cfg, sec), name))
    r, d = cfg.run, cfg.data
    _check(r.out_dir.strip() != "", "run.out_dir", r.out_dir, "must not be empty")
    _check(not (r.resume and r.overwrite), "run.resume", r.resume, "cannot be combined with run.overwrite=true")
    for name in r.preempt_signals:
        _check(name.startswith("SIG") and name in signal.Signals.__members__, "run.preempt_signals",
               r.preempt_signals, f"{name!r} is not a signal name (SIGUSR1, SIGTERM, ...)")
        _check(name not in UNCATCHABLE_SIGNALS, "run.preempt_signals", r.preempt_signals,
               f"{name} cannot be caught")
    _check(len(set(r.preempt_signals)) == len(r.preempt_signals), "run.preempt_signals", r.preempt_signals,
           "must not repeat a signal")
    _check(len(d.synthetic_shape) == 3, "data.synthetic_shape", d.synthetic_shape,
           "must be 3 positive integers [C, H, W]")
    k = num_classes(cfg)
    _check(d.labels_per_client <= k, "data.labels_per_client", d.labels_per_client,
           f"must be between 1 and the {k} classes of {d.name}")
    bt = cfg.batching
    _check(bt.max_batch == 0 or bt.max_batch >= bt.min_batch, "batching.max_batch", bt.max_batch,
           "must be 0 (no limit) or >= batching.min_batch")
    _check(bool(bt.plan_probes), "batching.plan_probes", bt.plan_probes,
           "must be a non-empty list of integers >= 1")
    _check_optimizer(cfg.train)
    _check_micro_batch(cfg)
    _check_adascale(cfg)
    _check_gnp(cfg)
    _check_teacher_noise(cfg)
    _check(cfg.model.width == 1 or cfg.model.name == "bncnn", "model.width", cfg.model.width,
           f"applies to model.name='bncnn', not {cfg.model.name!r}")
    _check(not cfg.train.eval_sharpness_iters or cfg.train.eval_train_samples > 0, "train.eval_sharpness_iters",
           cfg.train.eval_sharpness_iters, "needs train.eval_train_samples > 0 (it reads their first batch)")
    _check(not cfg.train.eval_bn_recompute or not cfg.model.ghost_batch, "train.eval_bn_recompute",
           cfg.train.eval_bn_recompute, "not with model.ghost_batch (ghost slices would recompute other statistics)")
    _check_density(cfg)
    bt = cfg.batching
    if bt.global_mode == "adaptive":
        _check(bt.mode == "dynamic", "batching.global_mode", bt.global_mode,
               "needs batching.mode='dynamic' (the heterogeneity-aware allocation splits the chosen batch)")
        _check(not cfg.fl.clients, "batching.global_mode", bt.global_mode, "is not supported with fl.clients > 0")
    sc = cfg.scaling
    _check(sc.method not in ("gain", "teacher") or sc.small_batch >= 1, "scaling.small_batch", sc.small_batch,
           f"must be >= 1 with scaling.method={sc.method!r}")
    _check_federated(cfg)


def _check_micro_batch(cfg) -> None:
    """train.micro_batch: divides a static batch it splits; one micro-batch size serves the statistics too."""
    tc, sc = cfg.train, cfg.scaling
    mb = tc.micro_batch
    if 0 < mb < tc.batch_size:
        _check(cfg.batching.mode == "dynamic" or tc.batch_size % mb == 0, "train.micro_batch", mb,
               f"must divide train.batch_size={tc.batch_size} (equal micro-batches)")
    gb = cfg.model.ghost_batch
    if gb:
        per_pass, what = (mb, f"train.micro_batch={mb}") if 0 < mb < tc.batch_size else \
            (tc.batch_size, f"train.batch_size={tc.batch_size}")
        _check(cfg.batching.mode == "dynamic" or mb == -1 or gb >= per_pass or per_pass % gb == 0,
               "model.ghost_batch", gb, f"must divide {what}, the samples of one forward pass (equal ghost "
                                        "batches)")
    if mb and sc.method in ("gain", "teacher"):
        _check(sc.small_batch == mb, "scaling.small_batch", sc.small_batch,
               f"must equal train.micro_batch={mb} with scaling.method={sc.method!r}: one micro-batch pass "
               "serves accumulation and the small-batch statistics")


def _check_density(cfg) -> None:
    """A varying top-k density needs top-k, and is not wired into the federated client layer."""
    cc = cfg.compress
    for key, on in (("density_mode", cc.density_mode == "adaptive"), ("density_batch_ref", cc.density_batch_ref > 0)):
        if not on:
            continue
        _check(cc.method == "topk", f"compress.{key}", getattr(cc, key), "needs compress.method='topk'")
        _check(not cfg.fl.clients, f"compress.{key}", getattr(cc, key),
               "is not supported with fl.clients > 0 (the client layer compresses at a fixed density)")


def _check_adascale(cfg) -> None:
    """scaling.method = adascale: BSP (one gain on every rank), an SGD-type optimizer, no linear scaling."""
    if cfg.scaling.method != "adascale":
        return
    _check(cfg.sync.mode == "bsp", "sync.mode", cfg.sync.mode,
           "must be 'bsp' with scaling.method='adascale' (one gain from the synchronised statistics)")
    _check(cfg.train.optimizer in ("sgd", "lars"), "train.optimizer", cfg.train.optimizer,
           "must be 'sgd' or 'lars' with scaling.method='adascale' (its gain scales an SGD learning rate)")
    _check(not cfg.train.scale_lr, "train.scale_lr", cfg.train.scale_lr,
           "must be false with scaling.method='adascale' (the gain replaces the linear scaling rule)")


def _check_gnp(cfg) -> None:
    """scaling.method = gnp: its extra backward passes need plain fp32/bf16 gradients of whole
    micro-batches, outside any overlapping exchange (scaling/gnp.py)."""
    if cfg.scaling.method != "gnp":
        return
    _check(cfg.train.precision != "fp16", "train.precision", cfg.train.precision,
           "is not supported with scaling.method='gnp' (the finite difference needs unscaled gradients; use bf16)")
    _check(cfg.sync.bucket_mb == 0, "sync.bucket_mb", cfg.sync.bucket_mb,
           "must be 0 with scaling.method='gnp' (its extra backward passes would start the exchange's buckets)")
    _check(cfg.train.micro_batch == 0, "train.micro_batch", cfg.train.micro_batch,
           "must be 0 with scaling.method='gnp' (its L_j are the micro-batches of scaling.small_batch)")


def _check_teacher_noise(cfg) -> None:
    """Teacher v2 (scaling/noise_inject.py): its keys need its noises; the noise is added to unscaled
    local gradients before a dense exchange."""
    sc = cfg.scaling
    v2 = injects_noise(cfg)
    _check(sc.teacher_noise == "learned" or sc.method == "teacher", "scaling.teacher_noise", sc.teacher_noise,
           "needs scaling.method='teacher'")
    for key, value, default in (("noise_schedule", sc.noise_schedule, "always"),
                                ("noise_small_batch", sc.noise_small_batch, 0)):
        _check(v2 or value == default, f"scaling.{key}", value,
               "applies to scaling.teacher_noise='fisher', 'diagonal' or 'isotropic'")
    if not v2:
        return
    _check(sc.teacher_pretrain_steps == 0, "scaling.teacher_pretrain_steps", sc.teacher_pretrain_steps,
           f"must be 0 with scaling.teacher_noise={sc.teacher_noise!r} (only the learned teacher is trained)")
    _check(cfg.train.precision != "fp16", "train.precision", cfg.train.precision,
           f"is not supported with scaling.teacher_noise={sc.teacher_noise!r} (the noise is added to unscaled "
           "gradients; use bf16)")
    _check(cfg.compress.method == "none" or cfg.sync.mode == "fedavg", "compress.method", cfg.compress.method,
           f"is not supported with scaling.teacher_noise={sc.teacher_noise!r} under sync.mode={cfg.sync.mode!r} "
           "(the noise rides in the gradient exchange, which top-k would sparsify)")


def _check_optimizer(tc) -> None:
    """train.nesterov and train.betas: what torch and the optimizers of optim/ accept."""
    _check(len(tc.betas) == 2, "train.betas", tc.betas, "must be [beta1, beta2]")
    if tc.nesterov:
        _check(tc.optimizer in ("sgd", "lars"), "train.nesterov", tc.nesterov,
               f"applies to train.optimizer='sgd' or 'lars', not {tc.optimizer!r}")
        _check(tc.momentum > 0, "train.nesterov", tc.nesterov, "needs train.momentum > 0")


# what the federated client layer (fl.clients > 0) does not combine with yet, and why
_FL_NOT_YET = (
    ("scaling.method", lambda c: c.scaling.method, "none", "the gradient transforms run per rank"),
    ("batching.mode", lambda c: c.batching.mode, "static", "batches are per client, not per rank"),
    ("batching.plan_at_start", lambda c: c.batching.plan_at_start, False, "the plan sizes per-rank batches"),
    ("run.preempt_check_every", lambda c: c.run.preempt_check_every, 0,
     "the ranks agree on stops at the end of every round"),
)


def _check_federated(cfg: Config) -> None:
    """fl.* keys: the client layer needs fedavg rounds; its algorithms need fl.clients > 0."""
    fl, sy = cfg.fl, cfg.sync
    _check(len(fl.server_betas) == 2, "fl.server_betas", fl.server_betas, "must be [beta1, beta2]")
    if fl.clients == 0:
        for key, value, default in (("fl.algorithm", fl.algorithm, "fedavg"),
                                    ("fl.server_optimizer", fl.server_optimizer, "sgd"),
                                    ("fl.clients_per_round", fl.clients_per_round, 0),
                                    ("fl.bn", fl.bn, "average"),
                                    ("fl.server_lr", fl.server_lr, 1.0),
                                    ("fl.local_epochs", fl.local_epochs, 0.0)):
            _check(value == default, key, value, "needs fl.clients > 0 (the federated client layer; "
                                                 "fl.clients = ranks gives one client per rank)")
        return
    _check(sy.mode in ("fedavg", "bsp"), "sync.mode", sy.mode, f"must be 'fedavg' (rounds) or 'bsp' (every client "
                                                             f"every step) with fl.clients={fl.clients}")
    if sy.mode == "bsp":  # every client's batch in every step's gradient: no rounds, no server
        for key, value, default in (("fl.algorithm", fl.algorithm, "fedavg"),
                                    ("fl.server_optimizer", fl.server_optimizer, "sgd"),
                                    ("fl.server_lr", fl.server_lr, 1.0), ("fl.bn", fl.bn, "average"),
                                    ("fl.local_epochs", fl.local_epochs, 0.0)):
            _check(value == default, key, value, "applies to sync.mode='fedavg' rounds, not to BSP")
        _check(fl.clients_per_round in (0, fl.clients), "fl.clients_per_round", fl.clients_per_round,
               "must be 0 (all) under sync.mode='bsp': every client contributes to every step")
        for key, get, want, why in _FL_NOT_YET:
            _check(get(cfg) == want, key, get(cfg), f"must be {shown(want)} with fl.clients > 0 for now: {why}")
        _check(cfg.compress.method == "none", "compress.method", cfg.compress.method,
               "must be 'none' under sync.mode='bsp' with fl.clients > 0 for now")
        return
    _check(fl.clients_per_round <= fl.clients, "fl.clients_per_round", fl.clients_per_round,
           f"must be at most fl.clients={fl.clients}")
    _check(cfg.train.steps % sy.period == 0, "train.steps", cfg.train.steps,
           f"must be a multiple of sync.period={sy.period} with fl.clients > 0 (whole rounds)")
    _check(cfg.run.checkpoint_every % sy.period == 0, "run.checkpoint_every", cfg.run.checkpoint_every,
           f"must be a multiple of sync.period={sy.period} with fl.clients > 0 (checkpoints end rounds)")
    _check(fl.algorithm != "scaffold" or cfg.train.optimizer == "sgd", "train.optimizer", cfg.train.optimizer,
           "must be 'sgd' with fl.algorithm='scaffold' (its control variates correct SGD steps)")
    _check(fl.algorithm != "fednova" or not cfg.train.nesterov, "train.nesterov", cfg.train.nesterov,
           "must be false with fl.algorithm='fednova' (its |a_i|_1 is derived for heavy-ball momentum)")
    for key, get, want, why in _FL_NOT_YET:
        _check(get(cfg) == want, key, get(cfg), f"must be {shown(want)} with fl.clients > 0 for now: {why}")


def validate_for_world(cfg: Config, world_size: int) -> None:
    """Checks that need the job's rank count (run after MPI starts, before anything is written)."""
    r, bt = cfg.run, cfg.batching
    _check(not r.world_size or r.world_size == world_size, "run.world_size", r.world_size,
           f"does not match the job's {world_size} ranks")
    n = len(cfg.hetero.slowdown)
    _check(n in (0, world_size), "hetero.slowdown", cfg.hetero.slowdown,
           f"needs one factor per rank: {n} given, the job has {world_size} ranks")
    for key in ("link_latency_ms", "link_gbps"):
        v = getattr(cfg.hetero, key)
        _check(len(v) in (0, 1, world_size), f"hetero.{key}", v,
               f"needs one value, or one per rank: {len(v)} given, the job has {world_size} ranks")
    fl = cfg.fl
    if fl.clients:
        _check(fl.clients >= world_size, "fl.clients", fl.clients, f"must be at least the job's {world_size} ranks")
        k = fl.clients_per_round or fl.clients
        _check(k >= world_size, "fl.clients_per_round", fl.clients_per_round,
               f"must be at least the job's {world_size} ranks (0: all), so that no rank idles in a round")
    sc, b = cfg.scaling, cfg.train.batch_size
    if uses_micro_batches(cfg, world_size):
        _check(bt.mode == "static", "batching.mode", bt.mode,
               "must be 'static' when the local batch is split into scaling.small_batch micro-batches")
        _check(b % sc.small_batch == 0 and b // sc.small_batch >= 2, "scaling.small_batch", sc.small_batch,
               f"must divide train.batch_size={b} into at least 2 micro-batches")
    elif sc.method == "gain":
        _check(sc.small_batch < global_batch(cfg, world_size), "scaling.small_batch", sc.small_batch,
               f"must be below the global batch {global_batch(cfg, world_size)}")
    if sc.method == "adascale" and world_size == 1:  # no gradient exchange: micro-batches give the estimate
        mb = cfg.train.micro_batch
        _check(sc.small_batch >= 1 or 0 < mb < b, "scaling.small_batch", sc.small_batch,
               "must be >= 1 (or train.micro_batch below the batch) with scaling.method='adascale' on one rank: "
               "the noise-scale estimate needs micro-batches where no gradients are exchanged")
    if bt.mode == "dynamic":
        g = global_batch(cfg, world_size)
        _check(g >= world_size * bt.min_batch, "batching.global_batch", g,
               f"is below {world_size} ranks x batching.min_batch={bt.min_batch}")
        _check(not bt.max_batch or g <= world_size * bt.max_batch, "batching.global_batch", g,
               f"is above {world_size} ranks x batching.max_batch={bt.max_batch}")
        if bt.global_mode == "adaptive":
            _check_global_bounds(bt, g, world_size)


def _check_global_bounds(bt, g: int, world_size: int) -> None:
    """The adaptive global batch's range must hold every rank's minimum batch, the starting batch, and
    fit under the ranks' maximum batches."""
    lo, hi = bt.global_min or world_size * bt.min_batch, bt.global_max or 8 * g
    _check(lo >= world_size * bt.min_batch, "batching.global_min", bt.global_min,
           f"cannot hold {world_size} ranks x batching.min_batch={bt.min_batch}")
    _check(hi >= lo, "batching.global_max", bt.global_max, f"is below batching.global_min={lo}")
    _check(lo <= g <= hi, "batching.global_batch", g, f"must lie in [global_min, global_max] = [{lo}, {hi}]")
    _check(not bt.max_batch or hi <= world_size * bt.max_batch, "batching.global_max", hi,
           f"is above {world_size} ranks x batching.max_batch={bt.max_batch}")
