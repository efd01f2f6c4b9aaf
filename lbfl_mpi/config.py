"""Experiment configuration: nested dataclasses, TOML loading, ``--set`` overrides and validation.

Every field carries its documentation in ``metadata["help"]`` so that the README reference and
``lbfl config`` come from one place. Validation runs once, before MPI collectives,
training or any file write; every problem raises :class:`ConfigError` whose message names the key.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; the CLI prints it on one line and exits with code 2."""


def _f(default: Any, help: str, choices: tuple | None = None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


DATASETS = ("digits", "fashion_mnist", "synthetic", "cifar10", "cifar100", "caltech101", "caltech256", "food101")
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
               "caltech101": 101, "caltech256": 257, "food101": 101}
MODELS = ("cnn", "mlp", "resnet18", "resnet50", "vgg11", "alexnet", "vit_b_16")


@dataclass
class RunConfig:
    out_dir: str = _f("runs/default", "Run directory: config.toml, rank files, summary.json, checkpoints/.")
    name: str = _f("", "Free-form run name stored in summary.json (defaults to the out_dir's basename).")
    seed: int = _f(0, "Seed for model init, data partition and shuffling. Same seed, same run.")
    world_size: int = _f(0, "Expected number of ranks (clients); 0 accepts any. A mismatch is an error, "
                            "so a 10-client experiment cannot silently run on 4 ranks.")
    checkpoint_every: int = _f(0, "Write a checkpoint every N steps and at the end (0: never). "
                                  "The last 2 are kept.")
    resume: bool = _f(False, "Continue from the latest checkpoint in out_dir.")
    overwrite: bool = _f(False, "Delete the earlier run's files in out_dir and start again.")


@dataclass
class DataConfig:
    name: str = _f("digits", "Dataset.", DATASETS)
    root: str = _f("", "Directory holding a pre-staged dataset (cifar*, caltech*, food101, fashion_mnist). "
                       "Nothing is downloaded. Required for cifar*, caltech*, food101; for fashion_mnist "
                       "empty means /usr/share/datasets/fashion-mnist.")
    partition: str = _f("iid", "How training samples are split among clients.", ("iid", "labels", "dirichlet"))
    labels_per_client: int = _f(1, "With partition='labels': classes per client.")
    alpha: float = _f(0.5, "With partition='dirichlet': concentration; small alpha = more skew.")
    image_size: int = _f(0, "Image side for cifar*, caltech*, food101 (0: 32 for CIFAR, 224 otherwise).")
    workers: int = _f(0, "DataLoader worker processes per rank for image-file datasets (0: in-process).")
    synthetic_shape: list = _f([3, 32, 32], "Synthetic: sample shape [C, H, W].")
    synthetic_classes: int = _f(10, "Synthetic: number of classes.")
    synthetic_train: int = _f(8192, "Synthetic: training samples.")
    synthetic_test: int = _f(1024, "Synthetic: test samples.")
    synthetic_noise: float = _f(1.0, "Synthetic: noise std around each class template (signal std is 1).")


@dataclass
class ModelConfig:
    name: str = _f("cnn", "Model architecture (no pretrained weights).", MODELS)


@dataclass
class TrainConfig:
    steps: int = _f(200, "Training steps (iterations); every rank runs the same number.")
    batch_size: int = _f(32, "Per-client batch size b_c; the global batch is the sum over ranks.")
    lr: float = _f(0.05, "Learning rate.")
    momentum: float = _f(0.0, "SGD momentum (optimizer='sgd').")
    weight_decay: float = _f(0.0, "L2 weight decay.")
    optimizer: str = _f("sgd", "Optimizer; its state stays local to each client.", ("sgd", "adam"))
    schedule: str = _f("constant", "Learning-rate schedule after warm-up; cosine decays to 0 at train.steps.",
                       ("constant", "cosine"))
    warmup_steps: int = _f(0, "Linear warm-up: step t < warmup_steps uses lr * (t + 1) / warmup_steps.")
    scale_lr: bool = _f(False, "Linear scaling rule: lr * global_batch / base_batch (Goyal et al. 2017).")
    base_batch: int = _f(32, "Reference batch for scale_lr.")
    eval_every: int = _f(50, "Evaluate the global model every N steps (0: only at the end).")
    eval_batch: int = _f(256, "Batch size for evaluation.")
    precision: str = _f("fp32", "Forward/backward precision: fp32; bf16 or fp16 run the model under autocast "
                                "(fp16 with a loss scaler whose skip-or-step decision every BSP rank shares). "
                                "Parameters, gradients, the sync and the error-feedback residuals stay fp32.",
                        ("fp32", "bf16", "fp16"))
    channels_last: bool = _f(False, "Keep 4-D activations and conv weights in channels-last memory layout "
                                    "(faster convolutions on tensor-core GPUs).")


@dataclass
class SyncConfig:
    mode: str = _f("bsp", "bsp: gradient allreduce every step; fedavg: H local steps then model average "
                          "(Eq. 1a/1b); postlocal: bsp until switch_step, then fedavg.",
                   ("bsp", "fedavg", "postlocal"))
    period: int = _f(1, "H: local steps between model averages (fedavg, postlocal).")
    switch_step: int = _f(0, "postlocal: first step that runs local SGD.")
    wait_poll_us: float = _f(0.0, "0: wait for slower ranks inside MPI (which busy-polls). > 0: before each "
                                  "synchronising collective, wait in a non-blocking barrier polled every "
                                  "this many microseconds, sleeping in between, so that waiting ranks leave "
                                  "the CPU to ranks still computing (more ranks than cores, emulated "
                                  "heterogeneity). Numerics are unchanged.")
    bucket_mb: float = _f(0.0, "Dense BSP: gradients are packed, in the order autograd produces them, into "
                               "buckets of this many MiB, and each full bucket's allreduce starts during "
                               "backward (overlap). 0: one buffer reduced after backward. Off, with a logged "
                               "reason, with micro-batches (scaling.small_batch), compression or FedAvg.")


@dataclass
class DistConfig:
    backend: str = _f("auto", "Data plane for the collectives (MPI always starts the job: rank, size, local "
                              "rank). mpi: mpi4py, CUDA tensors staged through pinned host memory unless the "
                              "MPI is CUDA-aware; nccl, gloo: a torch.distributed process group bootstrapped "
                              "over MPI; auto: nccl when every rank on a node has its own CUDA device, "
                              "mpi otherwise (CPU, or ranks sharing a GPU).", ("auto", "mpi", "nccl", "gloo"))
    timeout_s: float = _f(300.0, "nccl, gloo: seconds to wait for the process group to form and for one "
                                 "collective before the rank fails (and the job aborts).")


@dataclass
class CompressConfig:
    method: str = _f("none", "Gradient compression (Eq. 9): none, or top-k sparsification with error "
                             "feedback. BSP compresses gradients; FedAvg compresses the model delta at each "
                             "average.", ("none", "topk"))
    density: float = _f(0.01, "Fraction k/n of entries sent (0 < density <= 1).")
    selection: str = _f("exact", "exact: torch.topk over |x|; sampled: threshold estimated from a random "
                                 "sample (DGC), corrected when the kept count misses k.", ("exact", "sampled"))
    scope: str = _f("global", "global: one top-k over the whole flat vector; layerwise: the same density "
                              "in every tensor.", ("global", "layerwise"))
    error_feedback: bool = _f(True, "Carry the unsent remainder g + r - C(g + r) to the next step.")
    warmup_steps: int = _f(0, "Dense steps before compression starts.")
    sample_fraction: float = _f(0.01, "sampled: fraction of entries sampled to estimate the threshold "
                                      "(at least 1000 entries).")
    tolerance: float = _f(0.2, "sampled: relative miss of the kept count from k that triggers a correction.")


@dataclass
class BatchingConfig:
    mode: str = _f("static", "static: every client uses train.batch_size; dynamic: batches proportional to "
                             "measured throughput with a fixed global batch (OmniLearn).", ("static", "dynamic"))
    global_batch: int = _f(0, "dynamic: global batch sum_c b_c kept fixed (0: train.batch_size x ranks).")
    min_batch: int = _f(1, "dynamic: smallest batch a client may get.")
    max_batch: int = _f(0, "dynamic: largest batch a client may get (0: no limit).")
    interval: int = _f(20, "dynamic: steps between re-allocations.")
    deadband: float = _f(0.1, "dynamic: keep the batches unless one would change by more than this fraction.")
    ewma: float = _f(0.5, "dynamic: weight of the newest interval in the smoothed throughput (1: no smoothing).")
    plan_at_start: bool = _f(False, "Run the `lbfl plan` probes (memory Eq. 3, compute model) on each rank's "
                                    "device before training and store them in the rank file's `plan` group; "
                                    "with dynamic batching each rank's largest permissible batch becomes its "
                                    "max batch.")
    plan_probes: list = _f([1, 2, 4, 8, 16, 32], "plan_at_start: probe batch sizes.")
    memory_budget_gb: float = _f(0.0, "plan_at_start: device memory budget in GB for the largest permissible "
                                      "batch (0: the GPU's total memory; no limit on CPU).")


@dataclass
class HeteroConfig:
    slowdown: list = _f([], "Per-rank slowdown factors emulating slower devices (one per rank; 1.0 = none): "
                            "a rank with factor f sleeps (f - 1) x t_compute after each compute, logged as "
                            "t_straggle. Empty: no emulation.")


@dataclass
class ScalingConfig:
    method: str = _f("none", "Gradient transform before the update (Eq. 5-7): none; step: U(X) of Eq. 6 "
                             "(factor X by critical phase); gain: per-layer r_l from the gradient noise "
                             "scale for a target small batch; teacher: the learned A(.) of Eq. 5b. BSP "
                             "transforms the synchronised gradient, FedAvg each client's local gradient.",
                     ("none", "step", "gain", "teacher"))
    threshold: float = _f(0.5, "Critical phase when the gradient change of Eq. 8 is >= this.")
    ewma: float = _f(0.0, "EWMA weight of the previous value when smoothing Eq. 8 (0: raw Eq. 8).")
    factor: float = _f(2.0, "step: X, the factor of U(X).")
    polarity: str = _f("experiments", "step: experiments = scale by X in critical phases (the paper's "
                                      "Fig. 7/8 runs); equation = scale by X outside them (Eq. 6a as printed).",
                       ("experiments", "equation"))
    small_batch: int = _f(0, "Target small batch b_s (gain, teacher) and micro-batch size. Micro-batches "
                             "are used for teacher pairs, and for the noise scale where the free BSP "
                             "estimate is unavailable (one rank, FedAvg); must divide train.batch_size "
                             "there. 0: off (required > 0 for gain and teacher).")
    noise_ema: float = _f(0.9, "Weight of the past in the bias-corrected EMAs of |G|^2 and tr(Sigma) "
                               "(noise scale, gain).")
    teacher_steps: int = _f(50, "teacher: training steps at the start and after each refresh.")
    teacher_refresh: int = _f(0, "teacher: also retrain every N steps (0: only when a critical phase starts).")
    teacher_chunk: int = _f(64, "teacher: gradient values per chunk the network reads.")
    teacher_hidden: int = _f(32, "teacher: hidden units of the per-chunk MLP.")
    teacher_lr: float = _f(1e-3, "teacher: Adam learning rate.")


@dataclass
class TelemetryConfig:
    flush_every: int = _f(100, "Write buffered HDF5 rows every N steps; a killed job loses at most N rows "
                               "(a resumed run continues from its last checkpoint, which also flushes). "
                               "Each write resizes every column: at 10 it cost 5 %+ of a GPU step.")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    hetero: HeteroConfig = field(default_factory=HeteroConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


def sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else _resolve(f.type) for f in dataclasses.fields(Config)}


def _resolve(name: str) -> type:
    return globals()[name]


def reference() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every config key, for docs and ``lbfl config``."""
    rows = []
    for sec, cls in sections().items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_ = f.metadata["help"]
            if "choices" in f.metadata:
                help_ += " One of: " + ", ".join(f.metadata["choices"]) + "."
            rows.append((f"{sec}.{f.name}", _type_name(f.type), default, help_))
    return rows


def _type_name(t) -> str:
    return t if isinstance(t, str) else t.__name__


# ---------------------------------------------------------------------------------------------- loading
def _coerce(key: str, value: Any, typ: str) -> Any:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list),
    }[typ]
    if not ok:
        raise ConfigError(f"{key}: expected {typ}, got {value!r}")
    return float(value) if typ == "float" else value


def _apply(cfg: Config, section: str, key: str, value: Any) -> None:
    secs = sections()
    if section not in secs:
        raise ConfigError(f"unknown config section [{section}] (known: {', '.join(secs)})")
    sub = getattr(cfg, section)
    names = {f.name: f for f in dataclasses.fields(sub)}
    if key not in names:
        raise ConfigError(f"unknown config key {section}.{key} (known in [{section}]: {', '.join(names)})")
    setattr(sub, key, _coerce(f"{section}.{key}", value, _type_name(names[key].type)))


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML value (1, 0.5, true, [1, 2], "s"); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (TOML), apply ``section.key=value`` overrides, validate, return the Config."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {str(path)!r}: no such file")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {str(path)!r}: invalid TOML: {e}") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"config key {section!r} must be inside a [section]")
            for key, value in table.items():
                _apply(cfg, section, key, value)
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, text = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        _apply(cfg, section, key, parse_value(text.strip()))
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ validation
def _check(cond: bool, key: str, value: Any, want: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {want}")


def num_classes(cfg: Config) -> int:
    if cfg.data.name == "synthetic":
        return cfg.data.synthetic_classes
    return NUM_CLASSES[cfg.data.name]


def validate(cfg: Config) -> None:
    """Range and choice checks for every key; raises ConfigError naming the first bad key."""
    for sec, cls in sections().items():
        for f in dataclasses.fields(cls):
            if "choices" in f.metadata:
                v = getattr(getattr(cfg, sec), f.name)
                _check(v in f.metadata["choices"], f"{sec}.{f.name}", v,
                       "must be one of " + ", ".join(f.metadata["choices"]))
    r, d, t, s = cfg.run, cfg.data, cfg.train, cfg.sync
    _check(r.out_dir.strip() != "", "run.out_dir", r.out_dir, "must not be empty")
    _check(r.seed >= 0, "run.seed", r.seed, "must be >= 0")
    _check(r.world_size >= 0, "run.world_size", r.world_size, "must be >= 0")
    _check(r.checkpoint_every >= 0, "run.checkpoint_every", r.checkpoint_every, "must be >= 0")
    _check(not (r.resume and r.overwrite), "run.resume", r.resume, "cannot be combined with run.overwrite=true")
    _check(d.alpha > 0, "data.alpha", d.alpha, "must be > 0")
    _check(d.image_size >= 0, "data.image_size", d.image_size, "must be >= 0")
    _check(d.workers >= 0, "data.workers", d.workers, "must be >= 0")
    _check(len(d.synthetic_shape) == 3 and all(isinstance(x, int) and x > 0 for x in d.synthetic_shape),
           "data.synthetic_shape", d.synthetic_shape, "must be 3 positive integers [C, H, W]")
    _check(d.synthetic_classes >= 2, "data.synthetic_classes", d.synthetic_classes, "must be >= 2")
    _check(d.synthetic_train >= 1, "data.synthetic_train", d.synthetic_train, "must be >= 1")
    _check(d.synthetic_test >= 1, "data.synthetic_test", d.synthetic_test, "must be >= 1")
    _check(d.synthetic_noise >= 0, "data.synthetic_noise", d.synthetic_noise, "must be >= 0")
    k = num_classes(cfg)
    _check(1 <= d.labels_per_client <= k, "data.labels_per_client", d.labels_per_client,
           f"must be between 1 and the {k} classes of {d.name}")
    _check(t.steps >= 1, "train.steps", t.steps, "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _check(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "must be >= 0")
    _check(t.base_batch >= 1, "train.base_batch", t.base_batch, "must be >= 1")
    _check(t.eval_every >= 0, "train.eval_every", t.eval_every, "must be >= 0")
    _check(t.eval_batch >= 1, "train.eval_batch", t.eval_batch, "must be >= 1")
    _check(s.period >= 1, "sync.period", s.period, "must be >= 1")
    _check(s.switch_step >= 0, "sync.switch_step", s.switch_step, "must be >= 0")
    _check(s.wait_poll_us >= 0, "sync.wait_poll_us", s.wait_poll_us, "must be >= 0")
    _check(s.bucket_mb >= 0, "sync.bucket_mb", s.bucket_mb, "must be >= 0 (0: one buffer)")
    _check(cfg.dist.timeout_s > 0, "dist.timeout_s", cfg.dist.timeout_s, "must be > 0")
    c = cfg.compress
    _check(0 < c.density <= 1, "compress.density", c.density, "must be in (0, 1]")
    _check(c.warmup_steps >= 0, "compress.warmup_steps", c.warmup_steps, "must be >= 0")
    _check(0 < c.sample_fraction <= 1, "compress.sample_fraction", c.sample_fraction, "must be in (0, 1]")
    _check(0 < c.tolerance < 1, "compress.tolerance", c.tolerance, "must be in (0, 1)")
    bt = cfg.batching
    _check(bt.global_batch >= 0, "batching.global_batch", bt.global_batch, "must be >= 0")
    _check(bt.min_batch >= 1, "batching.min_batch", bt.min_batch, "must be >= 1")
    _check(bt.max_batch == 0 or bt.max_batch >= bt.min_batch, "batching.max_batch", bt.max_batch,
           "must be 0 (no limit) or >= batching.min_batch")
    _check(bt.interval >= 1, "batching.interval", bt.interval, "must be >= 1")
    _check(bt.deadband >= 0, "batching.deadband", bt.deadband, "must be >= 0")
    _check(0 < bt.ewma <= 1, "batching.ewma", bt.ewma, "must be in (0, 1]")
    _check(bool(bt.plan_probes) and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                                        for b in bt.plan_probes),
           "batching.plan_probes", bt.plan_probes, "must be a non-empty list of integers >= 1")
    _check(bt.memory_budget_gb >= 0, "batching.memory_budget_gb", bt.memory_budget_gb, "must be >= 0")
    _check(all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 1 for f in cfg.hetero.slowdown),
           "hetero.slowdown", cfg.hetero.slowdown, "must be a list of numbers >= 1")
    sc = cfg.scaling
    _check(sc.factor > 0, "scaling.factor", sc.factor, "must be > 0")
    _check(sc.threshold >= 0, "scaling.threshold", sc.threshold, "must be >= 0")
    _check(0 <= sc.ewma < 1, "scaling.ewma", sc.ewma, "must be in [0, 1)")
    _check(0 <= sc.noise_ema < 1, "scaling.noise_ema", sc.noise_ema, "must be in [0, 1)")
    _check(sc.small_batch >= 0, "scaling.small_batch", sc.small_batch, "must be >= 0")
    _check(sc.method not in ("gain", "teacher") or sc.small_batch >= 1, "scaling.small_batch", sc.small_batch,
           f"must be >= 1 with scaling.method={sc.method!r}")
    _check(sc.teacher_steps >= 1, "scaling.teacher_steps", sc.teacher_steps, "must be >= 1")
    _check(sc.teacher_refresh >= 0, "scaling.teacher_refresh", sc.teacher_refresh, "must be >= 0")
    _check(sc.teacher_chunk >= 1, "scaling.teacher_chunk", sc.teacher_chunk, "must be >= 1")
    _check(sc.teacher_hidden >= 1, "scaling.teacher_hidden", sc.teacher_hidden, "must be >= 1")
    _check(sc.teacher_lr > 0, "scaling.teacher_lr", sc.teacher_lr, "must be > 0")
    _check(cfg.telemetry.flush_every >= 1, "telemetry.flush_every", cfg.telemetry.flush_every, "must be >= 1")


def validate_for_world(cfg: Config, world_size: int) -> None:
    """Checks that need the job's rank count (run after MPI starts, before anything is written)."""
    r, bt = cfg.run, cfg.batching
    _check(not r.world_size or r.world_size == world_size, "run.world_size", r.world_size,
           f"does not match the job's {world_size} ranks")
    n = len(cfg.hetero.slowdown)
    _check(n in (0, world_size), "hetero.slowdown", cfg.hetero.slowdown,
           f"needs one factor per rank: {n} given, the job has {world_size} ranks")
    sc, b = cfg.scaling, cfg.train.batch_size
    if uses_micro_batches(cfg, world_size):
        _check(bt.mode == "static", "batching.mode", bt.mode,
               "must be 'static' when the local batch is split into scaling.small_batch micro-batches")
        _check(b % sc.small_batch == 0 and b // sc.small_batch >= 2, "scaling.small_batch", sc.small_batch,
               f"must divide train.batch_size={b} into at least 2 micro-batches")
    elif sc.method == "gain":
        _check(sc.small_batch < global_batch(cfg, world_size), "scaling.small_batch", sc.small_batch,
               f"must be below the global batch {global_batch(cfg, world_size)}")
    if bt.mode == "dynamic":
        g = global_batch(cfg, world_size)
        _check(g >= world_size * bt.min_batch, "batching.global_batch", g,
               f"is below {world_size} ranks x batching.min_batch={bt.min_batch}")
        _check(not bt.max_batch or g <= world_size * bt.max_batch, "batching.global_batch", g,
               f"is above {world_size} ranks x batching.max_batch={bt.max_batch}")


def uses_micro_batches(cfg: Config, world_size: int) -> bool:
    """Whether the local batch is split into micro-batches of scaling.small_batch: always for the
    teacher's training pairs; for the noise scale (and gain) where the free BSP estimate is missing."""
    sc = cfg.scaling
    if sc.small_batch < 1:
        return False
    return sc.method == "teacher" or cfg.sync.mode != "bsp" or world_size == 1


def global_batch(cfg: Config, world_size: int) -> int:
    """sum_c b_c: batching.global_batch in dynamic mode when set, else train.batch_size x ranks."""
    if cfg.batching.mode == "dynamic" and cfg.batching.global_batch:
        return cfg.batching.global_batch
    return cfg.train.batch_size * world_size


# ------------------------------------------------------------------------------------------------ TOML
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(data: dict) -> str:
    """Write a two-level dict (sections of scalars/lists) as TOML; round-trips through tomllib."""
    out = []
    for section, table in data.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        out.append("")
    return "\n".join(out)


