"""The ``compress``, ``batching``, ``hetero`` and ``scaling`` sections of the configuration schema:
top-k compression (Eq. 9), batch allocation, emulated heterogeneity and the gradient transforms
(Eq. 5-7)."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import INT_MAX
from .fields import config_field as _f


@dataclass
class CompressConfig:
    method: str = _f("none", "Gradient compression (Eq. 9): none, or top-k sparsification with error "
                             "feedback. BSP compresses gradients; FedAvg compresses the model delta at each "
                             "average.", ("none", "topk"))
    density: float = _f(0.01, "Fraction k/n of entries sent (0 < density <= 1).", min=0, max=1, min_open=True)
    selection: str = _f("exact", "exact: torch.topk over |x|; sampled: threshold estimated from a random "
                                 "sample (DGC), corrected when the kept count misses k.", ("exact", "sampled"))
    scope: str = _f("global", "global: one top-k over the whole flat vector; layerwise: the same density "
                              "in every tensor.", ("global", "layerwise"))
    error_feedback: bool = _f(True, "Carry the unsent remainder g + r - C(g + r) to the next step (error feedback, an "
                                            "addition to Eq. 9; false: Eq. 9 alone).")
    warmup_steps: int = _f(0, "Dense steps before compression starts.", min=0, max=INT_MAX)
    sample_fraction: float = _f(0.01, "sampled: fraction of entries sampled to estimate the threshold "
                                      "(at least 1000 entries).", min=0, max=1, min_open=True)
    tolerance: float = _f(0.2, "sampled: relative miss of the kept count from k that triggers a correction.",
                          min=0, max=1, min_open=True, max_open=True)
    density_mode: str = _f("fixed", "fixed: compress.density every step; adaptive: compress.density_critical "
                                    "in the steps after a critical phase by Eq. 8 (scaling.threshold), "
                                    "compress.density elsewhere (Accordion; docs/methods.md#phase-aware-"
                                    "compression).", ("fixed", "adaptive"))
    density_critical: float = _f(0.1, "adaptive: the density in critical phases (0 < d <= 1; usually above "
                                      "compress.density: compression hurts most there).",
                                 min=0, max=1, min_open=True)
    density_batch_ref: int = _f(0, "> 0: a larger batch is sparser (the paper's Eq. 9 remark): the density "
                                   "becomes d x min(1, density_batch_ref / B), B the step's global batch. "
                                   "0: off.", min=0, max=INT_MAX)


@dataclass
class BatchingConfig:
    mode: str = _f("static", "static: every client uses train.batch_size; dynamic: batches proportional to "
                             "measured throughput with a fixed global batch (OmniLearn).", ("static", "dynamic"))
    global_batch: int = _f(0, "dynamic: global batch sum_c b_c kept fixed (0: train.batch_size x ranks).",
                           min=0, max=INT_MAX)
    min_batch: int = _f(1, "dynamic: smallest batch a client may get.", min=1, max=INT_MAX)
    max_batch: int = _f(0, "dynamic: largest batch a client may get (0: no limit).", min=0, max=INT_MAX)
    interval: int = _f(20, "dynamic: steps between re-allocations (and global_mode='adaptive': between "
                           "choices of the global batch).", min=1, max=INT_MAX)
    global_mode: str = _f("fixed", "fixed: the global batch stays batching.global_batch; adaptive: every "
                                   "batching.interval steps it moves to the goodput optimum, throughput "
                                   "(fitted per-rank step time, slowest rank, t_sync of Eq. 2) x statistical "
                                   "efficiency (phi + B0) / (phi + B) from the noise scale phi (Pollux; "
                                   "docs/methods.md#adaptive-global-batch). Needs batching.mode='dynamic'.",
                          ("fixed", "adaptive"))
    global_min: int = _f(0, "adaptive: the smallest global batch (0: ranks x batching.min_batch).",
                         min=0, max=INT_MAX)
    global_max: int = _f(0, "adaptive: the largest global batch (0: 8 x the starting one). With "
                            "batching.plan_at_start a rank's batch beyond its Eq. 3 limit is accumulated "
                            "in micro-batches of that limit.", min=0, max=INT_MAX)
    deadband: float = _f(0.1, "dynamic: keep the batches unless one would change by more than this fraction.",
                         min=0)
    ewma: float = _f(0.5, "dynamic: weight of the newest interval in the smoothed throughput (1: no smoothing).",
                     min=0, max=1, min_open=True)
    plan_at_start: bool = _f(False, "Run the `lbfl plan` probes (memory Eq. 3, compute model) on each rank's "
                                    "device before training and store them in the rank file's `plan` group; "
                                    "with dynamic batching each rank's largest permissible batch becomes its "
                                    "max batch.")
    plan_probes: list = _f([1, 2, 4, 8, 16, 32], "plan_at_start: probe batch sizes.", item="int",
                           min=1, max=INT_MAX)
    # 1e6 GB = 1 PB per device: anything above is a typo
    memory_budget_gb: float = _f(0.0, "plan_at_start and train.micro_batch=-1: device memory budget in GB for "
                                      "the largest permissible batch (0: the GPU's total memory; no limit on "
                                      "CPU, where train.micro_batch=-1 needs a budget).", min=0, max=1_000_000)


@dataclass
class HeteroConfig:
    # each factor multiplies a sleep: 1000x slower is far beyond any emulated device, and keeps it bounded
    slowdown: list = _f([], "Per-rank slowdown factors emulating slower devices (one per rank; 1.0 = none): "
                            "a rank with factor f sleeps (f - 1) x t_compute after each compute, logged as "
                            "t_straggle. Empty: no emulation.", item="float", min=1, max=1000)
    # 1e5 ms = 100 s per message, 1e-6 Gb/s = 125 bytes/s: beyond any real link
    link_latency_ms: list = _f([], "Emulated network latency per message in ms: empty (none), one value for "
                                   "every rank, or one per rank (the ring runs at the largest). Every "
                                   "data-plane exchange (gradients, model averages, a round's sums) then also "
                                   "waits its ring-collective time for the bytes actually sent, logged as "
                                   "t_link inside t_sync (docs/methods.md#emulated-network).",
                            item="float", min=0, max=100_000)
    link_gbps: list = _f([], "Emulated link bandwidth in Gb/s (1e9 bits/s): empty (unlimited), one value for "
                             "every rank, or one per rank (the ring runs at the smallest).",
                         item="float", min=1e-6, max=1e6)


@dataclass
class ScalingConfig:
    method: str = _f("none", "Gradient transform before the update (Eq. 5-7): none; step: U(X) of Eq. 6 "
                             "(factor X by critical phase); gain: per-layer r_l from the gradient noise "
                             "scale for a target small batch (a square-root, per-layer variant of AdaScale's "
                             "gain, applied to the gradient); teacher: the learned A(.) of Eq. 5b; adascale: "
                             "AdaScale SGD (Johnson et al. 2020), lr x r with r = (tr/B0 + |G|^2) / (tr/B + "
                             "|G|^2), B0 = train.base_batch, and a progress counter tau += r that reads the "
                             "schedule and ends the run at train.steps (BSP, sgd or lars); gnp: the "
                             "gradient-norm penalty (eps/4) mean_j |grad L_j|^2 over the micro-batches of "
                             "scaling.small_batch (Smith et al. 2021; one extra forward and backward, "
                             "scaling/gnp.py), added to each client's local gradient. BSP transforms the "
                             "synchronised gradient, FedAvg each client's local gradient.",
                     ("none", "step", "gain", "teacher", "adascale", "gnp"))
    threshold: float = _f(0.5, "Critical phase when the gradient change of Eq. 8 is >= this.", min=0)
    ewma: float = _f(0.0, "EWMA weight of the previous value when smoothing Eq. 8 (0: raw Eq. 8).",
                     min=0, max=1, max_open=True)
    factor: float = _f(2.0, "step: X, the factor of U(X).", min=0, min_open=True)
    polarity: str = _f("experiments", "step: experiments = scale by X in critical phases (the paper's "
                                      "Fig. 7/8 runs); equation = scale by X outside them (Eq. 6a as printed).",
                       ("experiments", "equation"))
    small_batch: int = _f(0, "Target small batch b_s (gain, teacher) and micro-batch size. Micro-batches "
                             "are used for teacher pairs, and for the noise scale where the free BSP "
                             "estimate is unavailable (one rank, FedAvg); must divide train.batch_size "
                             "there. 0: off (required > 0 for gain and teacher).", min=0, max=INT_MAX)
    noise_ema: float = _f(0.9, "Weight of the past in the bias-corrected EMAs of |G|^2 and tr(Sigma) "
                               "(noise scale, gain) and of the teacher's per-sample variance.",
                          min=0, max=1, max_open=True)
    teacher_steps: int = _f(50, "teacher: training steps at the start and after each refresh; the teacher "
                                "is applied once it has taken this many, pretraining included.",
                            min=1, max=INT_MAX)
    teacher_pretrain_steps: int = _f(0, "teacher: brief pretraining before the first step of a fresh run (not "
                                        "on resume): each step computes, at the initial weights, the gradient "
                                        "of a large batch (BSP: the global batch, averaged over ranks; FedAvg: "
                                        "the local batch) and of an independent batch of scaling.small_batch "
                                        "samples, drawn from a separately seeded stream of the client's "
                                        "partition, and takes one teacher step on the pair. Model weights, "
                                        "BatchNorm statistics, random state and training batches are left as "
                                        "they were. 0: off.", min=0, max=INT_MAX)
    teacher_refresh: int = _f(0, "teacher: also retrain every N steps (0: only when a critical phase starts).",
                              min=0, max=INT_MAX)
    # the per-chunk MLP holds chunk x hidden weights: 65536 x 65536 is already 16 GiB
    teacher_chunk: int = _f(64, "teacher: gradient values per chunk the network reads.", min=1, max=65536)
    teacher_hidden: int = _f(32, "teacher: hidden units of the per-chunk MLP.", min=1, max=65536)
    teacher_lr: float = _f(1e-3, "teacher: Adam learning rate.", min=0, min_open=True)
    teacher_noise: str = _f("learned", "teacher: what A(.) of Eq. 5b adds to the gradient. learned: the learned "
                                       "gain and noise (scaling/teacher.py); fisher: teacher v2, sqrt(t b_t/(m-1)) "
                                       "sum_j z_j (g_j - g_bar) from the m micro-batch gradients g_j of "
                                       "scaling.small_batch = b_t samples, covariance (1/b_s - 1/B) Sigma, added "
                                       "before the gradient exchange; diagonal: the same variance per coordinate "
                                       "from an EMA, Gaussian; isotropic: the control of diagonal's trace "
                                       "(scaling/noise_inject.py).", ("learned", "fisher", "diagonal", "isotropic"))
    noise_small_batch: int = _f(0, "teacher v2 (fisher, diagonal, isotropic): the small batch b_s whose "
                                   "gradient noise is injected, (1/b_s - 1/B) Sigma (0: scaling.small_batch).",
                                min=0, max=INT_MAX)
    noise_schedule: str = _f("always", "teacher v2: when the noise is injected. always; until: in the first "
                                       "scaling.noise_until fraction of train.steps, then its variance falls "
                                       "linearly to 0 over scaling.noise_anneal x train.steps; critical: in the "
                                       "steps after a critical one by Eq. 8 (scaling.threshold).",
                             ("always", "until", "critical"))
    noise_until: float = _f(0.5, "teacher v2, noise_schedule = until: the fraction of train.steps with full "
                                 "noise.", min=0, max=1, min_open=True)
    noise_anneal: float = _f(0.1, "teacher v2, noise_schedule = until: the fraction of train.steps over which "
                                  "the variance then falls to 0 (0: it stops at once).", min=0, max=1)
    gnp_epsilon: float = _f(0.0, "gnp: eps of the penalty (eps/4) mean_j |grad L_j|^2 (0: the step's learning "
                                 "rate, SGD's implicit regulariser by Smith et al. 2021).", min=0)
    gnp_radius: float = _f(1e-3, "gnp: radius r of the finite-difference Hessian-vector product "
                                 "H g ~= |g| (grad L(theta + r g/|g|) - g) / r.", min=0, min_open=True)
