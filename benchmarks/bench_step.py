"""The whole training step, side by side: lbfl against plain PyTorch (1 rank), lbfl BSP against torch
DDP (N ranks).

Run (once with 1 rank for part a, once with 2 ranks for part b):
  python benchmarks/bench_step.py [--model cnn --model resnet18 --model resnet50] [--batch 32]
      [--steps 20] [--precision fp32|bf16|fp16] [--set section.key=value ...] [--markdown FILE]
  mpiexec -n 2 --oversubscribe python benchmarks/bench_step.py [same options] [--bucket-mb 25]
A dated report: add ``--markdown benchmarks/results/$(date +%F)-bench_step_1rank.md`` (or ``_2ranks``).

(a) 1 rank. One lbfl training step as ``lbfl train`` runs it (``Trainer.train_step`` plus the HDF5
    row, ``RankLog.log_step``; the rank file goes to a temporary directory) against a plain PyTorch
    loop (zero_grad, forward, cross_entropy, backward, step) of the same model, initial weights,
    per-rank batch, precision (autocast, with a GradScaler for fp16) and optimizer (SGD, momentum 0.9,
    lr 0.05, from the resolved config, built by the same ``build_optimizer``: fused where available), on synthetic CIFAR-shaped data (the plain loop reads batches
    of the same data, already on the device). Ratio lbfl / plain: above 1 is lbfl's overhead.
    Second table: the share of the lbfl step spent on telemetry and statistics, each part timed
    separately right after an lbfl step on the gradients it left: the per-layer squared norms
    (``layer_sq_norms`` + the ``.sum()`` read back), the gradient transform's statistics
    (``GradTransform.apply`` with ``scaling.method = "none"``: noise scale, Eq. 8 change), the BSP
    statistics vector (``GradTransform.local_stats``; only computed with > 1 rank), the step timer's
    laps, the row dict (with the loss ``.item()``), and ``log_step`` (averaged over
    ``telemetry.flush_every`` rows, so one flush is included). Target: <= 2 % of the step. On CUDA
    the laps' synchronisations also keep the host from queueing the next phase's kernels early, a
    cost that timing them alone does not show (compare lbfl / plain).
(b) N >= 2 ranks. lbfl BSP (``sync.bucket_mb = 0``: one flat buffer reduced after backward; and
    ``sync.bucket_mb = --bucket-mb``: buckets reduced during backward) against torch DDP (gloo on CPU
    and on a GPU that ranks share, nccl with one GPU per rank; process group bootstrapped over MPI,
    no torchrun), same model, per-rank batch, precision and optimizer. A step's time is the slowest
    rank's. Ratios lbfl / DDP and bucketed / one-buffer. ``--set dist.backend=mpi|gloo|nccl|auto``
    picks lbfl's data plane.

Every variant gets ``--warmup`` untimed steps, then ``--steps`` timed steps, interleaved in rounds of
``--round`` steps (a round of each variant in turn) so that drift of a shared machine hits all
alike; medians are printed. CUDA is synchronised before every clock read. CPU is always measured;
CUDA too when available (``--device`` picks). ``--set`` overrides go to every lbfl variant after the
benchmark's own (data, model, batch, optimizer), and the plain/DDP side follows the resolved config
(optimizer, lr, momentum, weight decay, precision, channels_last).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lbfl_mpi.comm.torch_plane import BackendError, init_torch_dist
from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.models import build_model
from lbfl_mpi.optim import build_optimizer
from lbfl_mpi.run.rundir import rank_file
from lbfl_mpi.scaling.noise_scale import layer_sq_norms
from lbfl_mpi.scaling.transform import GradTransform
from lbfl_mpi.telemetry import RankLog, StepTimer
from lbfl_mpi.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rows import append_row  # noqa: E402

REFUSED = (ConfigError, ValueError, BackendError)  # raised identically on every rank: report, go on

SHAPE = (3, 32, 32)
CLASSES = 10
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# the laps one BSP/none step of Trainer.train_step takes (data, compute, straggle, stats, sync, update, params)
LAPS = ("data", "compute", "straggle", "compute", "sync", "compute", "sync")
PARTS = ("layer_sq_norms", "transform", "local_stats", "timer", "row", "log_step")


# ----------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, comm=None) -> float:
    """Seconds of ``fn()``, CUDA finished on both sides; with ``comm`` all ranks start together."""
    _sync(device)
    if comm is not None:
        comm.barrier()
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def interleave(variants: dict, steps: int, warmup: int, round_: int, device, comm=None, after=None
               ) -> dict[str, list[float]]:
    """Per-step seconds of each variant: ``warmup`` untimed steps each, then rounds of ``round_`` timed
    steps of each variant in turn until every one has ``steps``. ``after[name]()`` runs (untimed) after
    each timed step of ``name``. Every rank runs the same sequence (collectives stay matched)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in variants}
    while any(len(t) < steps for t in times.values()):
        for name, fn in variants.items():
            for _ in range(min(round_, steps - len(times[name]))):
                times[name].append(timed(fn, device, comm))
                if after and name in after:
                    after[name]()
    return times


def slowest_median(times: list[float], comm) -> float:
    """Median over steps of the slowest rank's time (a collective step ends when the last rank does)."""
    per_rank = comm.allgather_obj(times)
    return statistics.median(max(ts) for ts in zip(*per_rank))


# ---------------------------------------------------------------------------------- the two sides
class LbflStep:
    """One ``Trainer.train_step`` plus its HDF5 row, as ``Trainer.run`` does them."""

    def __init__(self, overrides: list[str], comm: Comm, device_kind: str, out_dir: str):
        self.cfg = load_config(None, overrides + [f"run.out_dir={out_dir}"])
        _pin_device(comm, device_kind)
        self.trainer = tr = Trainer(self.cfg, comm)
        tr.sync.broadcast_initial()
        self.log = open_log(self.cfg, tr, rank_file(out_dir, comm.rank))
        self.timer = StepTimer(tr.device)
        self.step, self.row = 0, None
        self.out_dtype = _watch_dtype(tr.model)

    def __call__(self) -> None:
        self.row = self.trainer.train_step(self.step, self.timer)
        self.log.log_step(**self.row)
        self.step += 1

    def close(self) -> None:
        self.log.close()
        self.trainer.loader.close()


class PlainStep:
    """zero_grad / forward / cross_entropy / backward / step over pre-made batches on the device;
    with ``process_group`` (or ``ddp``) the model is wrapped in DistributedDataParallel."""

    def __init__(self, cfg, device: torch.device, batches, ddp: bool = False, process_group=None):
        tc = cfg.train
        torch.manual_seed(cfg.run.seed)  # the Trainer's initial weights
        model = build_model(cfg.model.name, SHAPE, CLASSES).to(device)
        self.channels_last = tc.channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.out_dtype = _watch_dtype(model)
        if ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                        process_group=process_group)
        self.model, self.device = model, device
        self.opt = build_optimizer(tc, model.parameters())  # the same (fused where available) as lbfl
        precision = tc.precision
        self.dtype = DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.batches = [(x.to(device).contiguous(memory_format=fmt), y.to(device)) for x, y in batches]
        self.i = 0

    def __call__(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = F.cross_entropy(self.model(x), y)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()


def open_log(cfg, tr: Trainer, path) -> RankLog:
    """The rank file as ``Trainer.run`` opens it."""
    return RankLog(path, rank=tr.comm.rank, world_size=tr.comm.world_size, config_json=cfg.to_json(),
                   device=str(tr.device), flush_every=cfg.telemetry.flush_every, extra_attrs=tr._data_plane_attrs())


def _pin_device(comm: Comm, kind: str) -> None:
    """Make the Trainer's ``comm.pick_device()`` choose ``kind`` (CPU also on a GPU machine)."""
    comm.pick_device = functools.partial(type(comm).pick_device, comm, "cpu" if kind == "cpu" else "auto")


def _watch_dtype(model: torch.nn.Module) -> dict:
    """{'dtype': the logits' dtype of the latest forward}: shows whether autocast was in effect."""
    seen: dict = {}

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor):
            seen["dtype"] = out.dtype
    model.register_forward_hook(hook)
    return seen


def sample_batches(tr: Trainer, batch: int, n: int = 8, seed: int = 0):
    """``n`` batches of the Trainer's own (synthetic, in-memory) training set."""
    data = tr.loader.dataset
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(len(data.y), (batch,), generator=g)
        out.append((data.x[idx].float(), data.y[idx].long()))
    return out


def lbfl_overrides(args, model: str) -> list[str]:
    own = ["data.name=synthetic", f"data.synthetic_shape=[{', '.join(map(str, SHAPE))}]",
           "data.synthetic_train=4096", f"model.name={model}", f"train.batch_size={args.batch}",
           "train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.eval_every=0",
           "sync.mode=bsp"]
    if args.precision != "fp32":  # a config without train.precision still runs fp32
        own.append(f"train.precision={args.precision}")
    return own + list(args.set or [])


# ------------------------------------------------------------------------------ part (a): telemetry
class TelemetryProbe:
    """Times, on the gradients the latest lbfl step left, the statistics and logging that step does."""

    def __init__(self, lb: LbflStep, out_dir: str):
        self.lb = lb
        tr = lb.trainer
        self.log = open_log(lb.cfg, tr, Path(out_dir) / "probe.h5")
        self.flush_every = max(1, int(lb.cfg.telemetry.flush_every))
        self.loss = torch.zeros((), device=tr.device)
        self.parts: dict[str, list[float]] = {k: [] for k in PARTS}

    def _time(self, name: str, fn, per: int = 1) -> None:
        self.parts[name].append(timed(fn, self.lb.trainer.device) / per)

    def __call__(self) -> None:
        tr, row = self.lb.trainer, self.lb.row
        grads = [p.grad for p in tr.sync.params]
        b = int(row["batch_size"])
        self._time("layer_sq_norms", lambda: float(layer_sq_norms(grads).sum()))
        sq = layer_sq_norms(grads)
        self._time("local_stats", lambda: GradTransform.local_stats(sq, b))
        if tr.cfg.scaling.method == "none":  # otherwise apply() is the algorithm, not statistics
            # as the trainer calls it: with one rank the step's own norms are reused, with BSP over
            # several ranks the synchronised gradient needs its own pass
            reuse = None if tr.comm.world_size > 1 else sq
            self._time("transform", lambda: tr.transform.apply(row["step"], b, None, None, False, layer_sq=reuse))
        timer = StepTimer(tr.device)

        def laps():
            timer.start()
            for name in LAPS:
                timer.lap(name)
        self._time("timer", laps)

        def build_row():  # what the return statement of train_step does
            return {**row, "epoch": tr.loader.epoch, "loss": float(self.loss.item()),
                    "t_data": timer.get("data"), "t_compute": timer.get("compute"),
                    "t_compress": timer.get("compress"), "t_sync": timer.get("sync"),
                    "t_step": sum(timer.times.values()), "t_straggle": timer.get("straggle")}
        self._time("row", build_row)

        def rows():
            for _ in range(self.flush_every):
                self.log.log_step(**row)
        self._time("log_step", rows, per=self.flush_every)

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) if v else math.nan
                for k, v in self.parts.items()}

    def close(self) -> None:
        self.log.close()


def part_a(args, comm: Comm, devices: list[str], emit) -> None:
    emit("")
    emit("## (a) 1 rank: lbfl step vs plain PyTorch loop")
    emit("")
    emit(f"Median ms over {args.steps} steps each (after {args.warmup} warm-up, rounds of {args.round}); "
         "lbfl = Trainer.train_step + RankLog.log_step.")
    emit("")
    head = ["model", "params", "device", "batch", "precision", "plain ms", "lbfl ms", "plain img/s", "lbfl img/s",
            "lbfl/plain", "telemetry+stats % of lbfl"]
    tel_head = ["model", "device", "layer_sq_norms ms", "transform stats ms", "(local_stats ms)",
                "timer laps ms", "row ms", "log_step ms", "total ms", "% of lbfl step (target <= 2 %)"]
    rows, tel_rows, notes = [], [], []
    for kind in devices:
        for name in args.model:
            with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
                try:
                    lb = LbflStep(lbfl_overrides(args, name), comm, kind, tmp)
                except REFUSED as e:
                    rows.append([name, "-", kind, str(args.batch), args.precision] + ["n/a"] * 6)
                    notes.append(f"{name} on {kind}: lbfl config not accepted: {e}")
                    continue
                device = lb.trainer.device
                plain = PlainStep(lb.cfg, device, sample_batches(lb.trainer, args.batch))
                probe = TelemetryProbe(lb, tmp)
                t = interleave({"plain": plain, "lbfl": lb}, args.steps, args.warmup, args.round, device,
                               after={"lbfl": probe})
                med = {k: statistics.median(v) for k, v in t.items()}
                parts = probe.medians()
                counted = [k for k in PARTS if k != "local_stats" or lb.trainer.exchanges_stats]
                total = sum(v for k, v in parts.items() if k in counted and not math.isnan(v))
                share = 100 * total / med["lbfl"]
                n = sum(p.numel() for p in lb.trainer.sync.params)
                rows.append([name, f"{n / 1e6:.2f}M", str(device), str(args.batch), args.precision,
                             f"{med['plain'] * 1e3:.2f}", f"{med['lbfl'] * 1e3:.2f}",
                             f"{args.batch / med['plain']:,.0f}", f"{args.batch / med['lbfl']:,.0f}",
                             f"{med['lbfl'] / med['plain']:.3f}", f"{share:.2f} %"])
                append_row(args.json, "bench_step", {
                    "model": name, "params": n, "device": str(device), "batch": args.batch,
                    "precision": args.precision, "overrides": list(args.set or []), "plain_s": med["plain"],
                    "lbfl_s": med["lbfl"], "plain_img_s": args.batch / med["plain"],
                    "lbfl_img_s": args.batch / med["lbfl"], "ratio": med["lbfl"] / med["plain"],
                    "telemetry_share": share / 100, "steps": args.steps})
                ms = lambda k: "n/a" if math.isnan(parts[k]) else f"{parts[k] * 1e3:.3f}"  # noqa: E731
                local = ms("local_stats") if "local_stats" in counted else f"({ms('local_stats')})"
                tel_rows.append([name, str(device), ms("layer_sq_norms"), ms("transform"), local,
                                 ms("timer"), ms("row"), ms("log_step"), f"{total * 1e3:.3f}", f"{share:.2f} %"])
                notes += _dtype_notes(name, device, args.precision, lb.out_dtype, plain.out_dtype)
                probe.close()
                lb.close()
                del lb, plain, probe
                _free()
    emit_table(emit, head, rows)
    emit("")
    emit("Telemetry and statistics inside the lbfl step, timed separately on the same gradients "
         "(medians; log_step averaged over telemetry.flush_every rows, one flush included; "
         "in parentheses: computed only with > 1 BSP rank, not in the total):")
    emit("")
    emit_table(emit, tel_head, tel_rows)
    for n in notes:
        emit(f"- {n}")


def _dtype_notes(name, device, precision, lb_seen: dict, plain_seen: dict) -> list[str]:
    want = DTYPES.get(precision, torch.float32)
    out = []
    for side, seen in (("lbfl", lb_seen), ("plain", plain_seen)):
        got = seen.get("dtype")
        if got is not None and got != want:
            out.append(f"{name} on {device}: the {side} forward produced {got} logits, not {want}: "
                       f"precision={precision} was not in effect there, the ratio compares unlike steps")
    return out


# ------------------------------------------------------------------------------- part (b): N ranks
def ddp_group(comm: Comm, backend: str, device: torch.device):
    """The process group DDP uses: the default one when it runs ``backend`` (created here if nobody
    created one yet), else a new group of all ranks with ``backend``. Returns (group, source)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        init_torch_dist(comm, backend, device=device)  # nccl binds the group to the rank's GPU
        return None, "lbfl_mpi.comm.torch_plane.init_torch_dist"
    if backend in dist.get_backend():
        return None, "existing default group"
    return dist.new_group(backend=backend), "new group beside the default one"


def part_b(args, comm: Comm, devices: list[str], emit) -> None:
    W = comm.world_size
    emit("")
    emit(f"## (b) {W} ranks: lbfl BSP vs torch DDP")
    emit("")
    emit(f"Median over {args.steps} steps each (after {args.warmup} warm-up, rounds of {args.round}) of the "
         f"slowest rank's step, ms. lbfl = Trainer.train_step + RankLog.log_step; one buffer = "
         f"sync.bucket_mb=0, bucketed = sync.bucket_mb={args.bucket_mb:g}.")
    emit("")
    head = ["model", "params", "device", "batch", "precision", "lbfl dist.backend", "DDP backend", "DDP ms",
            "lbfl one-buffer ms", "lbfl bucketed ms", "one-buffer/DDP", "bucketed/DDP", "bucketed/one-buffer"]
    rows, notes = [], []
    for kind in devices:
        own_gpu = kind == "cuda" and comm.local_size <= torch.cuda.device_count()
        backend = args.ddp_backend if args.ddp_backend != "auto" else ("nccl" if own_gpu else "gloo")
        if kind == "cuda" and not own_gpu:
            notes.append(f"cuda: {comm.local_size} ranks on this node share {torch.cuda.device_count()} GPU(s), "
                         f"which NCCL refuses: DDP runs on gloo, lbfl on its auto choice (mpi)")
        for name in args.model:
            with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
                base = lbfl_overrides(args, name)
                variants, errors = {}, {}
                for label, mb in (("one", 0), ("bucket", args.bucket_mb)):
                    out = str(Path(tmp) / label)
                    os.makedirs(out, exist_ok=True)
                    try:
                        variants[label] = LbflStep(base + [f"sync.bucket_mb={mb:g}"], comm, kind, out)
                    except REFUSED as e:
                        errors[label] = str(e)
                if "one" not in variants:
                    rows.append([name, "-", kind, str(args.batch), args.precision, "-", backend] + ["n/a"] * 6)
                    notes.append(f"{name} on {kind}: lbfl config not accepted: {errors['one']}")
                    continue
                lb = variants["one"]
                device = lb.trainer.device
                group, source = ddp_group(comm, backend, device)
                ddp = PlainStep(lb.cfg, device, sample_batches(lb.trainer, args.batch, seed=comm.rank), ddp=True,
                                process_group=group)
                timed_variants = {"ddp": ddp, **variants}
                t = interleave(timed_variants, args.steps, args.warmup, args.round, device, comm)
                med = {k: slowest_median(v, comm) for k, v in t.items()}
                n = sum(p.numel() for p in lb.trainer.sync.params)
                bk = med.get("bucket")
                fmt = lambda v: "n/a" if v is None else f"{v * 1e3:.2f}"  # noqa: E731
                ratio = lambda a, b: "n/a" if a is None or b is None else f"{a / b:.3f}"  # noqa: E731
                rows.append([name, f"{n / 1e6:.2f}M", str(device), str(args.batch), args.precision,
                             _plane(lb), backend,
                             fmt(med["ddp"]), fmt(med["one"]), fmt(bk), ratio(med["one"], med["ddp"]),
                             ratio(bk, med["ddp"]), ratio(bk, med["one"])])
                if "bucket" in errors:
                    notes.append(f"{name} on {kind}: bucketed variant n/a: {errors['bucket']}")
                for label, v in variants.items():
                    ex = v.trainer.sync.exchange
                    notes.append(f"{name} on {kind}: {'bucketed' if label == 'bucket' else 'one-buffer'} "
                                 f"variant: exchange {ex.name}, {getattr(ex, 'n_buckets', 1)} bucket(s)")
                notes.append(f"{name} on {kind}: DDP process group from {source}")
                notes += _dtype_notes(name, device, args.precision, lb.out_dtype, ddp.out_dtype)
                for v in variants.values():
                    v.close()
                del variants, lb, ddp, timed_variants
                _free()
    emit_table(emit, head, rows)
    for n in dict.fromkeys(notes):
        emit(f"- {n}")


def _plane(lb: LbflStep) -> str:
    """lbfl's data plane: ``dist.backend`` as asked, and what the Trainer resolved it to."""
    asked = getattr(getattr(lb.cfg, "dist", None), "backend", None)
    got = getattr(lb.trainer, "backend", None)
    if asked is None:
        return "mpi (no dist.backend key)"
    return asked if got is None or got == asked else f"{asked} -> {got}"


# ------------------------------------------------------------------------------------------ output
def emit_table(emit, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    emit("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    emit("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        emit("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def header(args, comm: Comm, devices: list[str]) -> str:
    dev = []
    for kind in devices:
        if kind == "cuda":
            dev.append(f"cuda ({torch.cuda.get_device_name(0)} x{torch.cuda.device_count()})")
        else:
            dev.append(f"cpu ({platform.machine()}, {os.cpu_count()} cores)")
    return (f"device {', '.join(dev)}; ranks {comm.world_size}; torch {torch.__version__}; "
            f"{torch.get_num_threads()} threads per rank; batch {args.batch} per rank; precision {args.precision}; "
            f"extra overrides: {' '.join(args.set) if args.set else 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="registry model (repeatable); default cnn, resnet18, resnet50")
    ap.add_argument("--batch", type=int, default=32, help="per-rank batch")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (>= 20 for reported numbers)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    ap.add_argument("--round", type=int, default=5, help="steps of one variant before switching to the next")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="extra lbfl config override")
    ap.add_argument("--device", action="append", choices=("cpu", "cuda"),
                    help="repeatable; default cpu, and cuda when available")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="(b): sync.bucket_mb of the bucketed variant")
    ap.add_argument("--ddp-backend", default="auto", choices=("auto", "gloo", "nccl"),
                    help="(b): DDP's backend; auto = gloo on CPU, nccl on CUDA")
    ap.add_argument("--markdown", metavar="FILE", help="also write the tables to this markdown file")
    ap.add_argument("--json", metavar="FILE", help="(a): append one raw JSON row per model to this file")
    args = ap.parse_args()
    args.model = args.model or ["cnn", "resnet18", "resnet50"]
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    comm = Comm()
    comm.pick_device("cpu")  # the per-rank CPU thread count the Trainer uses on CPU
    lines: list[str] = []

    def emit(text: str) -> None:
        if comm.rank == 0:
            print(text, flush=True)
            lines.append(text)

    emit(header(args, comm, devices))
    if args.steps < 20:
        emit(f"(only {args.steps} timed steps per variant: a quick check, not evidence)")
    if comm.world_size == 1:
        part_a(args, comm, devices, emit)
        emit("")
        emit("Part (b), lbfl BSP vs DDP: run again under `mpiexec -n 2`.")
    else:
        part_b(args, comm, devices, emit)
        emit("")
        emit("Part (a), lbfl vs a plain loop on 1 rank: run again without mpiexec.")
    if args.markdown and comm.rank == 0:
        launch = f"mpiexec -n {comm.world_size} --oversubscribe " if comm.world_size > 1 else ""
        cmd = launch + "python " + " ".join(shlex.quote(a) for a in sys.argv)
        title = f"# Training step: lbfl vs {'DDP' if comm.world_size > 1 else 'plain PyTorch'} " \
                f"({datetime.date.today().isoformat()})"
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join([title, "", f"Command: `{cmd}`", ""] + lines) + "\n")
    comm.barrier()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
