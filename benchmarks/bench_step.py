"""The whole training step on 1 rank, side by side: lbfl against a plain PyTorch loop.

Run (1 rank; the N-rank comparison against torch DDP is bench_step_ddp.py):
  python benchmarks/bench_step.py [--model cnn --model resnet18 --model resnet50] [--batch 32]
      [--steps 20] [--precision fp32|bf16|fp16] [--set section.key=value ...] [--markdown FILE] [--json FILE]
A dated report: add ``--markdown benchmarks/results/$(date +%F)-bench_step_1rank.md``.

One lbfl training step as ``lbfl train`` runs it (``lbfl_mpi.train.run_step`` plus the HDF5 row,
``RankLog.log_row``; the rank file goes to a temporary directory) against a plain PyTorch loop
(zero_grad, forward, cross_entropy, backward, step) of the same model, initial weights, per-rank
batch, precision (autocast, with a GradScaler for fp16) and optimizer (SGD, momentum 0.9, lr 0.05,
from the resolved config, built by the same ``build_optimizer``: fused where available), on synthetic
CIFAR-shaped data (the plain loop reads batches of the same data, already on the device). Ratio
lbfl / plain: above 1 is lbfl's overhead.

Second table: the share of the lbfl step spent on telemetry and statistics, each part timed
separately right after an lbfl step on the gradients it left: the per-layer squared norms
(``GradStatsPass.measure``: ``layer_sq_norms`` + the ``.sum()`` read back), the gradient transform's
statistics (``GradTransform.apply`` with ``scaling.method = "none"``: noise scale, Eq. 8 change), the
BSP statistics vector (``GradStats.local_vector``; only computed with > 1 rank), the step timer's
laps, the row (with the loss ``.item()``), and ``log_row`` (averaged over
``telemetry.flush_every`` rows, so one flush is included). Target: <= 2 % of the step. On CUDA the
laps' synchronisations also keep the host from queueing the next phase's kernels early, a cost that
timing them alone does not show (compare lbfl / plain).

Every variant gets ``--warmup`` untimed steps, then ``--steps`` timed steps, interleaved in rounds of
``--round`` steps (a round of each variant in turn) so that drift of a shared machine hits all
alike; medians are printed. CUDA is synchronised before every clock read. CPU is always measured;
CUDA too when available (``--device`` picks). ``--set`` overrides go to the lbfl step after the
benchmark's own (data, model, batch, optimizer), and the plain side follows the resolved config
(optimizer, lr, momentum, weight decay, precision, channels_last). ``--json FILE`` appends one raw
row per model (part ``bench_step``; benchmarks/gpu_check.sh reads them).

``--accumulate M`` adds part (c), gradient accumulation: the lbfl step with ``train.micro_batch =
batch / M`` (M micro-batches, their gradients added before the exchange) against the lbfl step of the
same batch in one pass, interleaved in the same run. Ratio accumulated / one pass: the overhead of M
smaller passes (target <= 1.05 on CPU). Models with BatchNorm compute something else accumulated
(each micro-batch normalised alone), at the same cost.
"""
from __future__ import annotations

import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import interleave, medians, timed
from _lbfl_step import (
    REFUSED,
    LbflStep,
    PlainStep,
    dtype_notes,
    emit_table,
    free,
    lbfl_overrides,
    run,
    step_parser,
)
from gpu_rows import append_row

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.telemetry import StepTimer

PARTS = ("layer_sq_norms", "transform", "local_stats", "timer", "row", "log_row")


class TelemetryProbe:
    """Times, on the gradients the latest lbfl step left, the statistics and logging that step does."""

    def __init__(self, lb: LbflStep, out_dir: str):
        self.lb = lb
        self.log = lb.open_log(Path(out_dir) / "probe.h5")
        self.flush_every = max(1, int(lb.cfg.telemetry.flush_every))
        self.loss = torch.zeros((), device=lb.device)
        self.parts: dict[str, list[float]] = {k: [] for k in PARTS}

    def _time(self, name: str, fn, per: int = 1) -> None:
        self.parts[name].append(timed(fn, self.lb.device) / per)

    def __call__(self) -> None:
        lb, row = self.lb, self.lb.row
        self._time("layer_sq_norms", lb.measure)
        stats = lb.measure()
        self._time("local_stats", lambda: lb.local_stats(stats))
        if lb.cfg.scaling.method == "none":  # otherwise apply() is the algorithm, not statistics
            self._time("transform", lambda: lb.transform_stats(stats))
        timer = StepTimer(lb.device)
        self._time("timer", lambda: lb.laps(timer))
        self._time("row", lambda: lb.build_row(row, self.loss, timer))

        def rows():
            for _ in range(self.flush_every):
                self.log.log_row(row)
        self._time("log_row", rows, per=self.flush_every)

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) if v else math.nan for k, v in self.parts.items()}

    def close(self) -> None:
        self.log.close()


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"


def profile_steps(steps: dict, device, path: str, what: str, n: int = 10, top: int = 25) -> None:
    """Append to ``path`` torch.profiler's table of ``n`` steps of each callable in ``steps`` (after
    the timed ones), the ops sorted by their own time on the device (CUDA) or the host: where the
    lbfl step's extra time goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(path, "a") as f:
        for label, fn in steps.items():
            with profile(activities=acts) as prof:
                for _ in range(n):
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            f.write(f"## {label}: {what}, {n} steps, by {key}\n\n")
            f.write(prof.key_averages().table(sort_by=key, row_limit=top) + "\n")
            if device.type == "cuda":
                f.write(f"### {label}: by self_cpu_time_total\n\n")
                f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top) + "\n")


def compare(args, comm: Comm, devices: list[str], emit) -> None:
    emit("")
    emit("## (a) 1 rank: lbfl step vs plain PyTorch loop")
    emit("")
    emit(f"Median ms over {args.steps} steps each (after {args.warmup} warm-up, rounds of {args.round}); "
         "lbfl = lbfl_mpi.train.run_step + RankLog.log_row.")
    emit("")
    head = ["model", "params", "device", "batch", "precision", "plain ms", "lbfl ms", "plain img/s", "lbfl img/s",
            "lbfl/plain", "telemetry+stats % of lbfl"]
    tel_head = ["model", "device", "layer_sq_norms ms", "transform stats ms", "(local_stats ms)",
                "timer laps ms", "row ms", "log_row ms", "total ms", "% of lbfl step (target <= 2 %)"]
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
                device = lb.device
                plain = PlainStep(lb.cfg, device, lb.sample_batches(args.batch))
                probe = TelemetryProbe(lb, tmp)
                t = interleave({"plain": plain, "lbfl": lb}, args.steps, args.warmup, args.round, device,
                               after={"lbfl": probe})
                med = medians(t)
                parts = probe.medians()
                counted = [k for k in PARTS if k != "local_stats" or lb.exchanges_stats]
                total = sum(v for k, v in parts.items() if k in counted and not math.isnan(v))
                share = 100 * total / med["lbfl"]
                n = lb.n_params
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
                ms = {k: _ms(v) for k, v in parts.items()}
                local = ms["local_stats"] if "local_stats" in counted else f"({ms['local_stats']})"
                tel_rows.append([name, str(device), ms["layer_sq_norms"], ms["transform"], local,
                                 ms["timer"], ms["row"], ms["log_row"], f"{total * 1e3:.3f}", f"{share:.2f} %"])
                notes += dtype_notes(name, device, args.precision, lb.out_dtype, plain.out_dtype)
                if args.profile:
                    profile_steps({"plain": plain, "lbfl": lb}, device, args.profile, f"{name} on {device}")
                probe.close()
                lb.close()
                del lb, plain, probe
                free()
    emit_table(emit, head, rows)
    emit("")
    emit("Telemetry and statistics inside the lbfl step, timed separately on the same gradients "
         "(medians; log_row averaged over telemetry.flush_every rows, one flush included; "
         "in parentheses: computed only with > 1 BSP rank, not in the total):")
    emit("")
    emit_table(emit, tel_head, tel_rows)
    for n in notes:
        emit(f"- {n}")


def accumulation(args, comm: Comm, devices: list[str], emit) -> None:
    """Part (c): the lbfl step with M micro-batches against one pass of the same batch."""
    m = args.accumulate
    if args.batch % m:
        raise SystemExit(f"--accumulate {m} must divide --batch {args.batch}")
    emit("")
    emit(f"## (c) gradient accumulation: {m} micro-batches of {args.batch // m} vs one pass of {args.batch}")
    emit("")
    head = ["model", "device", "batch", "one pass ms", f"{m} micro-batches ms", "accumulated / one pass"]
    rows = []
    for kind in devices:
        for name in args.model:
            with tempfile.TemporaryDirectory(prefix="bench_acc_") as tmp:
                for d in ("one", "acc"):
                    (Path(tmp) / d).mkdir()
                one = LbflStep(lbfl_overrides(args, name), comm, kind, str(Path(tmp) / "one"))
                acc = LbflStep(lbfl_overrides(args, name) + [f"train.micro_batch={args.batch // m}"], comm, kind,
                               str(Path(tmp) / "acc"))
                t = interleave({"one": one, "acc": acc}, args.steps, args.warmup, args.round, one.device)
                med = medians(t)
                rows.append([name, str(one.device), str(args.batch), f"{med['one'] * 1e3:.2f}",
                             f"{med['acc'] * 1e3:.2f}", f"{med['acc'] / med['one']:.3f}"])
                append_row(args.json, "bench_step_accumulate", {
                    "model": name, "device": str(one.device), "batch": args.batch, "micro_batches": m,
                    "one_s": med["one"], "acc_s": med["acc"], "ratio": med["acc"] / med["one"], "steps": args.steps})
                one.close()
                acc.close()
                del one, acc
                free()
    emit_table(emit, head, rows)


def main() -> None:
    ap = step_parser(__doc__)
    ap.add_argument("--json", metavar="FILE", help="append one raw JSON row per model to this file")
    ap.add_argument("--accumulate", type=int, default=0, metavar="M",
                    help="also part (c): M micro-batches (train.micro_batch = batch / M) vs one pass")
    ap.add_argument("--only-accumulate", action="store_true", help="part (c) alone")
    ap.add_argument("--profile", metavar="FILE", help="append torch.profiler tables of 10 more steps of each "
                                                      "(plain, lbfl) per model to this file")

    def parts(args, comm, devices, emit):
        if not args.only_accumulate:
            compare(args, comm, devices, emit)
        if args.accumulate:
            accumulation(args, comm, devices, emit)

    run(ap, parts, against="plain PyTorch", ranks_ok=lambda n: n == 1,
        refusal="runs on 1 rank, without mpiexec; lbfl BSP vs DDP on N ranks is "
                "mpiexec -n 2 python benchmarks/bench_step_ddp.py",
        footer="Part (b), lbfl BSP vs DDP: run benchmarks/bench_step_ddp.py under `mpiexec -n 2`.")


if __name__ == "__main__":
    main()
