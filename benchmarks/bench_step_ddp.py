"""The whole training step on N >= 2 ranks, side by side: lbfl BSP against torch DDP.

Run (the 1-rank comparison against a plain PyTorch loop is bench_step.py):
  mpiexec -n 2 --oversubscribe python benchmarks/bench_step_ddp.py [--model cnn --model resnet18]
      [--batch 32] [--steps 20] [--precision fp32|bf16|fp16] [--set section.key=value ...]
      [--bucket-mb 25] [--ddp-backend auto|gloo|nccl] [--markdown FILE]
A dated report: add ``--markdown benchmarks/results/$(date +%F)-bench_step_2ranks.md``.

lbfl BSP (``lbfl_mpi.train.run_step`` plus the HDF5 row, ``RankLog.log_row``; ``sync.bucket_mb = 0``:
one flat buffer reduced after backward; and ``sync.bucket_mb = --bucket-mb``: buckets reduced during
backward) against torch DDP (gloo on CPU and on a GPU that ranks share, nccl with one GPU per rank;
process group bootstrapped over MPI, no torchrun), same model, initial weights, per-rank batch,
precision and optimizer, on synthetic CIFAR-shaped data. A step's time is the slowest rank's. Ratios
lbfl / DDP and bucketed / one-buffer. ``--set dist.backend=mpi|gloo|nccl|auto`` picks lbfl's data
plane.

Every variant gets ``--warmup`` untimed steps, then ``--steps`` timed steps, interleaved in rounds of
``--round`` steps (a round of each variant in turn) so that drift of a shared machine hits all
alike; medians of the slowest rank are printed. CUDA is synchronised before every clock read. CPU is
always measured; CUDA too when available (``--device`` picks). ``--set`` overrides go to every lbfl
variant after the benchmark's own (data, model, batch, optimizer), and the DDP side follows the
resolved config (optimizer, lr, momentum, weight decay, precision, channels_last).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import interleave, slowest_median
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

from lbfl_mpi.comm.torch_plane import init_torch_dist
from lbfl_mpi.comm.world import Comm


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


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.3f}"


def compare(args, comm: Comm, devices: list[str], emit) -> None:
    W = comm.world_size
    emit("")
    emit(f"## (b) {W} ranks: lbfl BSP vs torch DDP")
    emit("")
    emit(f"Median over {args.steps} steps each (after {args.warmup} warm-up, rounds of {args.round}) of the "
         f"slowest rank's step, ms. lbfl = lbfl_mpi.train.run_step + RankLog.log_row; one buffer = "
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
                device = lb.device
                group, source = ddp_group(comm, backend, device)
                ddp = PlainStep(lb.cfg, device, lb.sample_batches(args.batch, seed=comm.rank), ddp=True,
                                process_group=group)
                timed_variants = {"ddp": ddp, **variants}
                t = interleave(timed_variants, args.steps, args.warmup, args.round, device, comm)
                med = {k: slowest_median(v, comm) for k, v in t.items()}
                bk = med.get("bucket")
                rows.append([name, f"{lb.n_params / 1e6:.2f}M", str(device), str(args.batch), args.precision,
                             lb.plane(), backend,
                             _ms(med["ddp"]), _ms(med["one"]), _ms(bk), _ratio(med["one"], med["ddp"]),
                             _ratio(bk, med["ddp"]), _ratio(bk, med["one"])])
                if "bucket" in errors:
                    notes.append(f"{name} on {kind}: bucketed variant n/a: {errors['bucket']}")
                for label, v in variants.items():
                    notes.append(f"{name} on {kind}: {'bucketed' if label == 'bucket' else 'one-buffer'} "
                                 f"variant: {v.exchange_note()}")
                notes.append(f"{name} on {kind}: DDP process group from {source}")
                notes += dtype_notes(name, device, args.precision, lb.out_dtype, ddp.out_dtype)
                for v in variants.values():
                    v.close()
                del variants, lb, ddp, timed_variants
                free()
    emit_table(emit, head, rows)
    for n in dict.fromkeys(notes):
        emit(f"- {n}")


def main() -> None:
    ap = step_parser(__doc__)
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="sync.bucket_mb of the bucketed variant")
    ap.add_argument("--ddp-backend", default="auto", choices=("auto", "gloo", "nccl"),
                    help="DDP's backend; auto = gloo on CPU, nccl on CUDA")
    run(ap, compare, against="DDP", ranks_ok=lambda n: n >= 2,
        refusal="needs >= 2 ranks: mpiexec -n 2 python benchmarks/bench_step_ddp.py "
                "(lbfl vs a plain loop on 1 rank is benchmarks/bench_step.py)",
        footer="Part (a), lbfl vs a plain loop on 1 rank: run benchmarks/bench_step.py without mpiexec.")


if __name__ == "__main__":
    main()
