"""The two sides of a training-step comparison, shared by bench_step.py (1 rank, lbfl against a plain
PyTorch loop), bench_step_ddp.py (N ranks, lbfl BSP against torch DDP) and bench_agree.py.

- :class:`LbflStep`: one lbfl training step as ``lbfl train`` runs it. It is the ONLY place in
  benchmarks/ that touches lbfl's training internals (``lbfl_mpi.train``: ``build_worker``, the
  worker and its client, ``run_step``, the client's loader, synchroniser, gradient pass and transform,
  the device, ...): the scripts use its methods, so a change of the trainer is ported here alone. It
  copies no library code: the telemetry probe calls the step's own functions (``statistics``'
  measurement, ``finish_row``, ``open_log``) and replays the timer calls one real step made.
- :class:`PlainStep`: zero_grad / forward / cross_entropy / backward / step of the same model, batch,
  precision and optimizer, optionally wrapped in DistributedDataParallel.
- the command line, report header, tables and markdown file both step scripts share (:func:`run`).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import platform
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lbfl_mpi.comm.torch_plane import BackendError
from lbfl_mpi.comm.world import Comm
from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.models import build_model
from lbfl_mpi.optim import build_optimizer
from lbfl_mpi.scaling.stats import GradStats
from lbfl_mpi.sync.base import NO_SYNC
from lbfl_mpi.telemetry import RankLog, StepRow, StepTimer
from lbfl_mpi.train import build_worker, run_step
from lbfl_mpi.train.loop import open_log
from lbfl_mpi.train.step import finish_row

REFUSED = (ConfigError, ValueError, BackendError)  # raised identically on every rank: report, go on

SHAPE = (3, 32, 32)
CLASSES = 10
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------- lbfl side
class LbflStep:
    """One ``lbfl_mpi.train.run_step`` plus its HDF5 row (``RankLog.log_row``), as the training loop
    (``lbfl_mpi.train.loop.train``) does them; the rank file goes to ``out_dir``. Calling it runs one
    step; ``row`` is the latest row (a ``StepRow``)."""

    def __init__(self, overrides: list[str], comm: Comm, device_kind: str, out_dir: str):
        self.cfg = load_config(None, overrides + [f"run.out_dir={out_dir}"])
        self.worker = build_worker(self.cfg, comm, device="cpu" if device_kind == "cpu" else "auto")
        self.client = self.worker.client
        self.client.sync.broadcast_initial()  # what the loop does on a fresh run
        self.log = open_log(self.worker)
        self.timer = _RecordingTimer(self.device)
        self.step, self.row = 0, None
        self.out_dtype = watch_dtype(self.client.model)

    def __call__(self) -> None:
        self.row = run_step(self.worker, self.client, self.step, self.timer)
        self.log.log_row(self.row)
        self.step += 1

    def close(self) -> None:
        self.log.close()
        self.worker.close()

    # --- what the step scripts read
    @property
    def device(self) -> torch.device:
        return self.worker.device

    @property
    def params(self) -> list[torch.Tensor]:
        """The synchronised parameters (their ``.grad`` is the step's gradient)."""
        return self.client.params

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def world_size(self) -> int:
        return self.worker.comm.world_size

    @property
    def exchanges_stats(self) -> bool:
        """Whether the step computes and exchanges the statistics vector (BSP with > 1 rank)."""
        return self.worker.exchanges_stats

    @property
    def agreeing(self) -> bool:
        """Whether the step runs the stop agreement (preemption signals, non-finite guard)."""
        return self.worker.stops.enabled

    def exchange_note(self) -> str:
        """The gradient exchange the step uses: its name and bucket count."""
        ex = self.client.sync.exchange
        return f"exchange {ex.name}, {getattr(ex, 'n_buckets', 1)} bucket(s)"

    def plane(self) -> str:
        """lbfl's data plane: ``dist.backend`` as asked, and what the worker resolved it to."""
        asked = getattr(getattr(self.cfg, "dist", None), "backend", None)
        got = getattr(self.worker, "backend", None)
        if asked is None:
            return "mpi (no dist.backend key)"
        return asked if got is None or got == asked else f"{asked} -> {got}"

    def sample_batches(self, batch: int, n: int = 8, seed: int = 0):
        """``n`` batches of the client's own (synthetic, in-memory) training set."""
        data = self.client.loader.dataset
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            idx = torch.randint(len(data.y), (batch,), generator=g)
            out.append((data.x[idx].float(), data.y[idx].long()))
        return out

    # --- the step's own statistics and logging, called one by one for the telemetry probe of bench_step.py
    def open_log(self, path) -> RankLog:
        """A second rank file at ``path``, opened as the training loop opens its own (loop.open_log)."""
        return open_log(self.worker, path=path)

    def measure(self) -> GradStats:
        """The ``statistics`` stage's measurement (GradStatsPass.measure: per-layer squared norms of the
        current gradients and their sum read back), no micro-batches."""
        c = self.client
        return c.grad_pass.measure(self.row.step, self.row.batch_size, None, c.loss_scale)

    @staticmethod
    def local_stats(stats: GradStats) -> torch.Tensor:
        """The statistics vector ``exchange_grads`` hands the BSP exchange (only with > 1 rank)."""
        return stats.local_vector(stats.layer_sq, stats.batch)

    def transform_stats(self, stats: GradStats) -> dict:
        """``transform.apply(stats)`` as ``update`` calls it, with no exchanged stats and no micro-batches:
        with one rank the step's own norms are reused, with BSP over several ranks the synchronised
        gradient needs its own pass. Only statistics when ``scaling.method = "none"``."""
        reuse = stats.layer_sq if self.world_size == 1 else None
        return self.client.transform.apply(dataclasses.replace(stats, layer_sq=reuse))

    def laps(self, timer: StepTimer) -> None:
        """The timer calls the latest real step made (recorded by the step's timer), replayed on
        ``timer``."""
        timer.start()
        for method, name, parts in self.timer.calls:
            getattr(timer, method)(name, **parts)

    def build_row(self, row: StepRow, loss: torch.Tensor, timer: StepTimer) -> StepRow:
        """The row's writes after the stages: the loss read back (``statistics``) and ``finish_row``
        (times, bytes, throughput; here without a synchronisation), on a copy of ``row``."""
        out = dataclasses.replace(row, loss=float(loss.item()))
        finish_row(self.worker, self.client, NO_SYNC, NO_SYNC, timer, out)
        return out


class _RecordingTimer(StepTimer):
    """The step's timer, keeping the sequence of laps of the latest step (``calls``) for the probe."""

    def start(self) -> None:
        self.calls = []
        super().start()

    def lap(self, name: str) -> float:
        if not getattr(self, "_in_split", False):
            self.calls.append(("lap", name, {}))
        return super().lap(name)

    def lap_split(self, name: str, **parts: float) -> float:
        self.calls.append(("lap_split", name, parts))
        self._in_split = True
        try:
            return super().lap_split(name, **parts)
        finally:
            self._in_split = False


def lbfl_overrides(args, model: str) -> list[str]:
    """The benchmark's own config overrides (data, model, batch, optimizer), then ``--set``."""
    own = ["data.name=synthetic", f"data.synthetic_shape=[{', '.join(map(str, SHAPE))}]",
           "data.synthetic_train=4096", f"model.name={model}", f"train.batch_size={args.batch}",
           "train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.eval_every=0",
           "sync.mode=bsp"]
    if args.precision != "fp32":  # a config without train.precision still runs fp32
        own.append(f"train.precision={args.precision}")
    return own + list(args.set or [])


# ------------------------------------------------------------------------------------ plain side
class PlainStep:
    """zero_grad / forward / cross_entropy / backward / step over pre-made batches on the device;
    with ``ddp`` the model is wrapped in DistributedDataParallel (over ``process_group``)."""

    def __init__(self, cfg, device: torch.device, batches, ddp: bool = False, process_group=None):
        tc = cfg.train
        torch.manual_seed(cfg.run.seed)  # lbfl's initial weights (build_worker seeds the same)
        model = build_model(cfg.model.name, SHAPE, CLASSES).to(device)
        self.channels_last = tc.channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.out_dtype = watch_dtype(model)
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


def watch_dtype(model: torch.nn.Module) -> dict:
    """{'dtype': the logits' dtype of the latest forward}: shows whether autocast was in effect."""
    seen: dict = {}

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor):
            seen["dtype"] = out.dtype
    model.register_forward_hook(hook)
    return seen


def dtype_notes(name, device, precision, lb_seen: dict, plain_seen: dict) -> list[str]:
    """A note per side whose forward did not run at ``precision``."""
    want = DTYPES.get(precision, torch.float32)
    out = []
    for side, seen in (("lbfl", lb_seen), ("plain", plain_seen)):
        got = seen.get("dtype")
        if got is not None and got != want:
            out.append(f"{name} on {device}: the {side} forward produced {got} logits, not {want}: "
                       f"precision={precision} was not in effect there, the ratio compares unlike steps")
    return out


# ---------------------------------------------------------------------------- command line, output
def step_parser(doc: str) -> argparse.ArgumentParser:
    """The options both step scripts take; each adds its own."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="registry model (repeatable); default cnn, resnet18, resnet50")
    ap.add_argument("--batch", type=int, default=32, help="per-rank batch")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (>= 20 for reported numbers)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    ap.add_argument("--round", type=int, default=5, help="steps of one variant before switching to the next")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="extra lbfl config override")
    ap.add_argument("--device", action="append", choices=("cpu", "cuda"),
                    help="repeatable; default cpu, and cuda when available")
    ap.add_argument("--markdown", metavar="FILE", help="also write the tables to this markdown file")
    return ap


def emit_table(emit, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    emit("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    emit("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        emit("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def free() -> None:
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


def run(ap: argparse.ArgumentParser, part, *, against: str, ranks_ok, refusal: str, footer: str) -> None:
    """Parse ``ap``, then on every rank: ``part(args, comm, devices, emit)`` between the header and
    ``footer``; rank 0 prints, and writes ``--markdown`` titled "Training step: lbfl vs {against}".
    With a world size that ``ranks_ok`` refuses, ``refusal`` is printed and every rank exits 2."""
    args = ap.parse_args()
    args.model = args.model or ["cnn", "resnet18", "resnet50"]
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    comm = Comm()
    if not ranks_ok(comm.world_size):
        if comm.rank == 0:
            print(f"{ap.prog}: {refusal}; this run has {comm.world_size} rank(s)", file=sys.stderr, flush=True)
        sys.exit(2)
    comm.pick_device("cpu")  # the per-rank CPU thread count lbfl uses on CPU
    lines: list[str] = []

    def emit(text: str) -> None:
        if comm.rank == 0:
            print(text, flush=True)
            lines.append(text)

    emit(header(args, comm, devices))
    if args.steps < 20:
        emit(f"(only {args.steps} timed steps per variant: a quick check, not evidence)")
    part(args, comm, devices, emit)
    emit("")
    emit(footer)
    if args.markdown and comm.rank == 0:
        launch = f"mpiexec -n {comm.world_size} --oversubscribe " if comm.world_size > 1 else ""
        cmd = launch + "python " + " ".join(shlex.quote(a) for a in sys.argv)
        title = f"# Training step: lbfl vs {against} ({datetime.date.today().isoformat()})"
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join([title, "", f"Command: `{cmd}`", ""] + lines) + "\n")
    comm.barrier()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
