"""The gradient exchange on every data plane, against raw mpi4py on the same bytes, side by side.

Run: mpiexec -n 2 --oversubscribe python benchmarks/bench_sync.py [--model resnet18] [--reps 10]
     [--bucket-mb 4] [--backend gloo] [--markdown FILE]

Per model, medians (the slowest rank's time of each repetition) of:
- raw MPI: one ``MPI_Allreduce`` of a float32 numpy buffer of the gradient's bytes (no packing);
- mpi one-buffer: what dense BSP does on the MPI plane: pack the gradients with the weight,
  allreduce in 4 MiB slices (``LBFL_ALLREDUCE_CHUNK_MB``), unpack with the division;
- mpi bucketed: the bucketed exchange (``sync.bucket_mb``) run after backward, i.e. its collectives
  without any overlap (what it costs when there is no backward to hide behind);
- per-tensor: one MPI allreduce per gradient tensor;
- the same one-buffer and bucketed exchanges over each ``--backend`` torch.distributed process group
  (default gloo; nccl too when every rank has a GPU of its own).
Ratios are against raw MPI (above 1: slower than the bare collective). Needs >= 2 ranks.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import median_time  # noqa: E402  (the slowest rank defines a collective's time)

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.exchange import BucketedExchange, DenseExchange
from lbfl_mpi.models import build_model
from lbfl_mpi.sync import BSPSync

SHAPES = {"cnn": (1, 8, 8), "mlp": (1, 8, 8)}


def exchanges(comm, model, bucket_mb):
    params = [q for q in model.parameters() if q.requires_grad]
    one = BSPSync(comm, model, DenseExchange(comm, params))
    bucketed = BucketedExchange(comm, params, 0, bucket_mb)
    buck = BSPSync(comm, model, bucketed)
    return one, buck, bucketed


def raw_allreduce(comm, buf: np.ndarray):
    """One in-place MPI_Allreduce of ``buf``, no packing."""
    MPI = comm.MPI

    def run():
        comm.comm.Allreduce(MPI.IN_PLACE, buf)
    return run


def per_tensor(comm, params):
    """One allreduce per gradient tensor, then the division."""
    def run():
        for q in params:
            flat = q.grad.reshape(-1)
            comm.allreduce_(flat)
            flat.div_(comm.world_size)
    return run


def sync(s):
    """One BSP gradient exchange of synchroniser ``s`` (batch 1)."""
    def run():
        s.begin_step(1)
        s.sync_grads(0, 1)
    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", help="registry model(s); default cnn, resnet18")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--bucket-mb", type=float, default=4.0)
    p.add_argument("--backend", action="append", help="torch backends to compare (default gloo; nccl)")
    p.add_argument("--markdown", help="also write the table to this markdown file")
    args = p.parse_args()
    comm = Comm()
    if comm.world_size < 2:
        sys.exit("bench_sync needs >= 2 ranks: mpiexec -n 2 python benchmarks/bench_sync.py")
    device = comm.pick_device()
    mpi_plane = comm.plane
    backends = args.backend or ["gloo"]
    planes = {}
    for name in backends:
        comm.plane = mpi_plane
        comm.start_backend(name)
        planes[name] = comm.plane
    comm.plane = mpi_plane
    lines = [f"ranks={comm.world_size} device={device} reps={args.reps} bucket_mb={args.bucket_mb:g} "
             f"torch={torch.__version__} slices={mpi_plane.chunk_bytes / 2**20:g} MiB"]
    cols = ["model", "MB", "raw MPI ms", "mpi 1-buf", "mpi bucketed", "per-tensor"]
    for name in backends:
        cols += [f"{name} 1-buf", f"{name} bucketed"]
    rows = []
    for model_name in args.model or ["cnn", "resnet18"]:
        model = build_model(model_name, SHAPES.get(model_name, (3, 32, 32)), 10).to(device)
        for q in model.parameters():
            q.grad = torch.randn_like(q)
        one, buck, bucketed = exchanges(comm, model, args.bucket_mb)
        n = one.exchange.flat.numel
        raw = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        t_raw = median_time(raw_allreduce(comm, raw), comm, args.reps, device)
        times = [median_time(sync(one), comm, args.reps, device), median_time(sync(buck), comm, args.reps, device),
                 median_time(per_tensor(comm, one.params), comm, args.reps, device)]
        for name in backends:
            comm.plane = planes[name]
            times += [median_time(sync(one), comm, args.reps, device),
                      median_time(sync(buck), comm, args.reps, device)]
            comm.plane = mpi_plane
        rows.append([model_name, f"{4 * n / 1e6:.1f}", f"{t_raw * 1e3:.2f}"]
                    + [f"{t * 1e3:.2f} ({t / t_raw:.2f}x)" for t in times])
        rows[-1].append(str(bucketed.n_buckets))
    cols.append("buckets")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    table = [" ".join(c.rjust(w) for c, w in zip(cols, widths))]
    table += [" ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    if comm.rank == 0:
        print("\n".join(lines + table), flush=True)
        if args.markdown:
            md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            md += ["| " + " | ".join(r) + " |" for r in rows]
            with open(args.markdown, "w") as fh:
                fh.write("\n".join(lines) + "\n\n" + "\n".join(md) + "\n")
    from lbfl_mpi.comm.torch_plane import shutdown_torch_dist

    shutdown_torch_dist()


if __name__ == "__main__":
    main()
