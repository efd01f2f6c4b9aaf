"""The configuration schema: one dataclass per section, every field documented in its metadata (so
``lbfl config``, docs/config.md and the checks come from one place), and the values derived from a
Config (class count, global batch sum_c b_c, whether micro-batches are used)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .fields import INT_MAX, RESUME_CHOICES, SEED_MAX, choice_text, dump_toml, field_type, range_text
from .fields import config_field as _f
from .schema_fl import FLConfig
from .schema_scaling import BatchingConfig, CompressConfig, HeteroConfig, ScalingConfig

FASHION_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs it
DATASETS = ("digits", "fashion_mnist", "synthetic", "cifar10", "cifar100", "caltech101", "caltech256", "food101")
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
               "caltech101": 101, "caltech256": 257, "food101": 101}
MODELS = ("cnn", "bncnn", "mlp", "resnet18", "resnet50", "vgg11", "alexnet", "vit_b_16")


@dataclass
class RunConfig:
    out_dir: str = _f("runs/default", "Run directory: config.toml, rank files, summary.json, checkpoints/.")
    name: str = _f("", "Free-form run name stored in summary.json (defaults to the out_dir's basename).")
    seed: int = _f(0, "Seed for model init, data partition and shuffling. Same seed, same run, bit for bit, on "
                      "the same machine kind, torch version, rank and thread count (docs/results.md, "
                      "Reproducibility).",
                   min=0, max=SEED_MAX)
    world_size: int = _f(0, "Expected number of ranks (clients); 0 accepts any. A mismatch is an error, "
                            "so a 10-client experiment cannot silently run on 4 ranks.", min=0, max=INT_MAX)
    checkpoint_every: int = _f(0, "Write a checkpoint every N steps and at the end (0: never). "
                                  "The last 2 are kept.", min=0, max=INT_MAX)
    resume: bool | str = _f(False, "false: start fresh (refuse a directory holding a run); true: continue "
                                   "from the latest valid checkpoint (error if none); auto: continue from the "
                                   "latest valid checkpoint when there is one, start fresh otherwise, so one "
                                   "job script serves the first run and every requeue.",
                            choices=RESUME_CHOICES, type_name="bool|auto")
    overwrite: bool = _f(False, "Delete the earlier run's files in out_dir and start again.")
    preempt_signals: list = _f(["SIGUSR1", "SIGTERM"], "Signals that request a checkpoint and exit 3 (requeue) "
                                                       "at the next step boundary the ranks agree on. Empty: "
                                                       "signals keep their default action. Names as in "
                                                       "Python's signal module (SIGUSR1, SIGTERM, ...); "
                                                       "SIGKILL and SIGSTOP cannot be caught.", item="str")
    # above 1e6 steps a pending signal would go unanswered long past any scheduler's grace period
    preempt_check_every: int = _f(0, "Steps without a synchronisation (FedAvg between averages) between extra "
                                     "agreements on a pending signal or non-finite value; 0: agree only where "
                                     "ranks synchronise anyway (BSP: every step; FedAvg: every sync.period "
                                     "steps).", min=0, max=1_000_000)


@dataclass
class DataConfig:
    name: str = _f("digits", "Dataset.", DATASETS)
    root: str = _f("", "Directory holding a pre-staged dataset (cifar*, caltech*, food101, fashion_mnist). "
                       "Nothing is downloaded. Required for cifar*, caltech*, food101; for fashion_mnist "
                       "empty means /usr/share/datasets/fashion-mnist.")
    partition: str = _f("iid", "How training samples are split among clients.", ("iid", "labels", "dirichlet"))
    # the upper bound, the dataset's class count, is checked in validate()
    labels_per_client: int = _f(1, "With partition='labels': classes per client (at most the dataset's "
                                                 "class count).", min=1)
    alpha: float = _f(0.5, "With partition='dirichlet': concentration; small alpha = more skew.",
                      min=0, min_open=True)
    # 4096: well above any of the supported datasets' native resolution
    image_size: int = _f(0, "Image side for cifar*, caltech*, food101 (0: 32 for CIFAR, 224 otherwise).",
                         min=0, max=4096)
    workers: int = _f(0, "DataLoader worker processes per rank for image-file datasets (0: in-process).",
                      min=0, max=256)
    synthetic_shape: list = _f([3, 32, 32], "Synthetic: sample shape [C, H, W].", item="int", min=1, max=65536)
    # 2**20: 50x ImageNet-21k's classes; the classifier head alone is already gigabytes there
    synthetic_classes: int = _f(10, "Synthetic: number of classes.", min=2, max=1_048_576)
    synthetic_train: int = _f(8192, "Synthetic: training samples.", min=1, max=INT_MAX)
    synthetic_test: int = _f(1024, "Synthetic: test samples.", min=1, max=INT_MAX)
    synthetic_noise: float = _f(1.0, "Synthetic: noise std around each class template (signal std is 1).", min=0)
    train_subset: int = _f(0, "Train on this many samples of the training set, drawn once from a fixed stream "
                              "(the same for every run.seed and rank); the validation split and the client "
                              "partition are made from them. 0: all.", min=0, max=INT_MAX)
    val_fraction: float = _f(0.0, "Hold this fraction of the (subset of the) training set out as a validation "
                                  "split, stratified by class and fixed for every run.seed; no client trains on "
                                  "it. When > 0, train.eval_every evaluates the validation split (eval columns "
                                  "val_loss, val_acc) and the test set is evaluated once, after the last step. "
                                  "0: no split (eval measures the test set).", min=0, max=0.9)


@dataclass
class ModelConfig:
    name: str = _f("cnn", "Model architecture (no pretrained weights). bncnn: a small VGG-like CNN with "
                          "BatchNorm, fast on CPU.", MODELS)
    norm: str = _f("default", "Normalisation after every conv of cnn, bncnn, resnet18, resnet50: batch "
                              "(BatchNorm: statistics of each client's own batch, never synchronised, so "
                              "under BSP the update is not the global-batch gradient), group (GroupNorm, "
                              "per sample), none; default: the architecture's own (cnn none, the others "
                              "batch).", ("default", "batch", "group", "none"))
    width: int = _f(1, "bncnn: multiplies its channel widths 16/32/64 and its 64 hidden units (2: 32/64/128, "
                       "about 4x the parameters).", min=1, max=64)
    ghost_batch: int = _f(0, "Ghost BatchNorm (Hoffer et al. 2017): in training every BatchNorm layer normalises "
                             "slices of this many samples of each forward pass (the batch, or the micro-batch "
                             "of train.micro_batch) with their own statistics, in the same pass; it must divide "
                             "that pass, and one at least the pass is plain BatchNorm. 0: off.",
                          min=0, max=INT_MAX)


@dataclass
class TrainConfig:
    steps: int = _f(200, "Training steps (iterations); every rank runs the same number.", min=1, max=INT_MAX)
    batch_size: int = _f(32, "Per-client batch size b_c; the global batch is the sum over ranks.",
                         min=1, max=INT_MAX)
    # no upper bound: a huge lr is a legitimate way to provoke (and test) the non-finite guard
    lr: float = _f(0.05, "Learning rate.", min=0, min_open=True)
    momentum: float = _f(0.0, "Momentum of optimizer='sgd' and 'lars' (heavy ball).", min=0, max=1, max_open=True)
    weight_decay: float = _f(0.0, "Weight decay: L2 for sgd and adam, decoupled for adamw and lamb, the beta of "
                                  "Eq. 'lambda = eta ||w|| / (||g|| + beta ||w||)' for lars.", min=0)
    optimizer: str = _f("sgd", "Optimizer; its state stays local to each client. lars: You et al. 2017 "
                               "(train.trust_coefficient); lamb: You et al. 2020, with bias correction; "
                               "adamw: Adam with decoupled weight decay (Loshchilov & Hutter 2019).",
                        ("sgd", "adam", "adamw", "lars", "lamb"))
    micro_batch: int = _f(0, "Gradient accumulation: each client's batch runs as micro-batches of this many "
                             "samples whose gradients add up before the exchange (one batch's gradient for a "
                             "model without BatchNorm); it must divide a static batch, and one at least the "
                             "batch is one pass. 0: off; -1: the largest divisor of the batch that "
                             "Eq. 3's memory model fits in batching.memory_budget_gb on the rank's device.",
                          min=-1, max=INT_MAX)
    nesterov: bool = _f(False, "Nesterov momentum for sgd and lars (needs train.momentum > 0).")
    trust_coefficient: float = _f(0.001, "LARS trust coefficient eta of the layer-wise lr.", min=0, min_open=True)
    betas: list = _f([0.9, 0.999], "Adam, AdamW and LAMB moment decays [beta1, beta2], each in [0, 1).",
                     item="float", min=0, max=1, max_open=True)
    eps: float = _f(0.0, "Adam, AdamW and LAMB epsilon; 0: the optimizer's default (1e-8 Adam and AdamW, "
                         "1e-6 LAMB).", min=0)
    exclude_bias_norm: bool = _f(True, "lars, lamb, adamw: tensors of one dimension or fewer (biases, "
                                       "normalisation weights) get neither the trust ratio nor weight decay, "
                                       "as in the LARS/LAMB papers; sgd and adam decay every parameter.")
    schedule: str = _f("constant", "Learning-rate schedule after warm-up; cosine decays to 0 at train.steps.",
                       ("constant", "cosine"))
    warmup_steps: int = _f(0, "Linear warm-up: step t < warmup_steps uses lr * (t + 1) / warmup_steps.",
                           min=0, max=INT_MAX)
    scale_lr: bool = _f(False, "Linear scaling rule: lr * global_batch / base_batch (Goyal et al. 2017).")
    base_batch: int = _f(32, "Reference batch for scale_lr.", min=1, max=INT_MAX)
    eval_every: int = _f(50, "Evaluate the global model every N steps (0: only at the end).", min=0, max=INT_MAX)
    eval_batch: int = _f(256, "Batch size for evaluation.", min=1, max=INT_MAX)
    eval_train_samples: int = _f(0, "Every evaluation also measures the global model on this many training "
                                    "samples, drawn once from a fixed stream (eval columns train_loss, "
                                    "train_acc: the train side of the generalisation gap). 0: off.",
                                 min=0, max=INT_MAX)
    eval_bn_recompute: int = _f(0, "An evaluation control, not an FL method: before every evaluation the global "
                                   "model's BatchNorm running statistics are recomputed from this many training "
                                   "samples pooled over all clients (the first of train.eval_train_samples' fixed "
                                   "draw), and put back after it, so training is untouched "
                                   "(train/bn_recompute.py). Separates averaged running_var from the weights "
                                   "under FedAvg. Not with model.ghost_batch. 0: off.", min=0, max=INT_MAX)
    eval_sharpness_iters: int = _f(0, "Every evaluation also estimates the top Hessian eigenvalue of the "
                                      "training loss (eval column sharpness) by this many power iterations "
                                      "of exact Hessian-vector products on the first train.eval_batch samples "
                                      "of train.eval_train_samples (scaling/sharpness.py). 0: off.",
                                   min=0, max=10_000)
    precision: str = _f("fp32", "Forward/backward precision: fp32; bf16 or fp16 run the model under autocast "
                                "(fp16 with a loss scaler whose skip-or-step decision every BSP rank shares). "
                                "Parameters, gradients, the sync and the error-feedback residuals stay fp32.",
                        ("fp32", "bf16", "fp16"))
    channels_last: bool = _f(False, "Keep 4-D activations and conv weights in channels-last memory layout "
                                    "(faster convolutions on tensor-core GPUs).")
    nonfinite: str = _f("stop", "A non-finite loss or gradient norm: stop = every rank stops at the step "
                                "(exit 4), keeping the last good checkpoint; skip = drop that update (under "
                                "BSP on every rank) and count it in the nonfinite_skip column; ignore = "
                                "train on.", ("stop", "skip", "ignore"))


@dataclass
class SyncConfig:
    mode: str = _f("bsp", "bsp: gradient allreduce every step; fedavg: H local steps then model average "
                          "(Eq. 1a/1b); postlocal: bsp until switch_step, then fedavg.",
                   ("bsp", "fedavg", "postlocal"))
    period: int = _f(1, "H: local steps between model averages (fedavg, postlocal).", min=1, max=INT_MAX)
    switch_step: int = _f(0, "postlocal: first step that runs local SGD.", min=0, max=INT_MAX)
    # a sleep between polls: more than a second per poll only delays every synchronisation
    wait_poll_us: float = _f(0.0, "0: wait for slower ranks inside MPI (which busy-polls). > 0: before each "
                                  "synchronising collective, wait in a non-blocking barrier polled every "
                                  "this many microseconds, sleeping in between, so that waiting ranks leave "
                                  "the CPU to ranks still computing (more ranks than cores, emulated "
                                  "heterogeneity). Numerics are unchanged.", min=0, max=1_000_000)
    # 1 TiB: larger than any device's memory, i.e. already one bucket for any model
    bucket_mb: float = _f(0.0, "Dense BSP: gradients are packed, in the order autograd produces them, into "
                               "buckets of this many MiB, and each full bucket's allreduce starts during "
                               "backward (overlap). 0: one buffer reduced after backward. Off, with a logged "
                               "reason, with micro-batches (scaling.small_batch), compression or FedAvg.",
                          min=0, max=1_048_576)


@dataclass
class DistConfig:
    backend: str = _f("auto", "Data plane for the collectives (MPI always starts the job: rank, size, local "
                              "rank). mpi: mpi4py, CUDA tensors staged through pinned host memory unless the "
                              "MPI is CUDA-aware; nccl, gloo: a torch.distributed process group bootstrapped "
                              "over MPI; auto: nccl when every rank on a node has its own CUDA device, "
                              "mpi otherwise (CPU, or ranks sharing a GPU).", ("auto", "mpi", "nccl", "gloo"))
    # one day: no collective legitimately waits longer, and a job hung that long should fail
    timeout_s: float = _f(300.0, "Seconds a rank may wait in one collective before it fails and the job "
                                 "aborts (exit code 1). MPI (the mpi data plane, and the object collectives, "
                                 "barriers and stop agreement of every backend): the rank prints one line "
                                 "naming itself, the step and the collective, and calls MPI_Abort. nccl, "
                                 "gloo: torch's timeout, also for the process group to form. Cannot be "
                                 "disabled; keep it above the longest legitimate wait (rank 0 writing a "
                                 "checkpoint or the summary while the others wait).",
                          min=0, max=86_400, min_open=True)


@dataclass
class TelemetryConfig:
    flush_every: int = _f(100, "Write buffered HDF5 rows every N steps; a killed job loses at most N rows "
                               "(a resumed run continues from its last checkpoint, which also flushes). "
                               "Each write resizes every column: at 10 it cost 5 %+ of a GPU step.",
                          min=1, max=INT_MAX)


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
    fl: FLConfig = field(default_factory=FLConfig)

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
    """(key, type, default, help) for every config key, for docs and ``lbfl config``. The help ends
    with the allowed values: "One of: ..." or "Range: ..." (and "finite" for an unbounded float)."""
    rows = []
    for sec, cls in sections().items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_ = f.metadata["help"]
            if "choices" in f.metadata:
                help_ += " One of: " + ", ".join(choice_text(c) for c in f.metadata["choices"]) + "."
            rng = range_text(f.metadata, f.metadata.get("item") or field_type(f))
            if rng:
                each = ("each element in " if rng[0] in "[(" else "each element ") if "item" in f.metadata else ""
                help_ += f" Range: {each}{rng}."
            rows.append((f"{sec}.{f.name}", field_type(f), default, help_))
    return rows


def num_classes(cfg: Config) -> int:
    if cfg.data.name == "synthetic":
        return cfg.data.synthetic_classes
    return NUM_CLASSES[cfg.data.name]


def uses_micro_batches(cfg: Config, world_size: int) -> bool:
    """Whether the local batch is split into micro-batches of scaling.small_batch: always for the
    teacher's training pairs and the gradient-norm penalty's L_j; for the noise scale (and gain) where
    the free BSP estimate is missing."""
    sc = cfg.scaling
    if sc.small_batch < 1:
        return False
    return sc.method in ("teacher", "gnp") or cfg.sync.mode != "bsp" or world_size == 1


def injects_noise(cfg: Config) -> bool:
    """Teacher v2: structured small-batch noise added before the exchange (scaling/noise_inject.py)."""
    return cfg.scaling.method == "teacher" and cfg.scaling.teacher_noise != "learned"


def global_batch(cfg: Config, world_size: int) -> int:
    """sum_c b_c: batching.global_batch in dynamic mode when set; with fl.clients > 0,
    train.batch_size x the clients that train at once (all N under BSP, K of a FedAvg round); else
    train.batch_size x ranks."""
    if cfg.batching.mode == "dynamic" and cfg.batching.global_batch:
        return cfg.batching.global_batch
    if cfg.fl.clients:
        k = cfg.fl.clients if cfg.sync.mode == "bsp" else (cfg.fl.clients_per_round or cfg.fl.clients)
        return cfg.train.batch_size * k
    return cfg.train.batch_size * world_size
