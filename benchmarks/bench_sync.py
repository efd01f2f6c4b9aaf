"""One flat-buffer allreduce (what BSP does) versus one allreduce per tensor, side by side.

Run: mpiexec -n 2 --oversubscribe python benchmarks/bench_sync.py [--model resnet18] [--reps 10]
Prints, per model, the median time of each variant and their ratio (per-tensor / flat; above 1 means
the flat buffer is faster). The flat variant includes packing (with the weight) and unpacking (with the
division), as BSP does; "of it MPI" is the bare allreduce of the packed buffer; "unsliced" is the
flat variant with one MPI_Allreduce over the whole buffer instead of 4 MiB slices. Needs >= 2 ranks.
"""
import argparse
import statistics
import time

import torch

from lbfl_mpi.dist.comm import Comm
from lbfl_mpi.models import build_model
from lbfl_mpi.sync import BSPSync


def median_time(fn, comm, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    # the slowest rank defines a collective's time
    return statistics.median(max(ts) for ts in zip(*comm.allgather_obj(times)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", help="registry model(s); default cnn, resnet18")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    comm = Comm()
    device = comm.pick_device()
    shapes = {"cnn": (1, 8, 8), "resnet18": (3, 32, 32), "resnet50": (3, 32, 32)}
    if comm.rank == 0:
        print(f"ranks={comm.world_size} device={device} reps={args.reps}")
        print(f"slices of {comm.chunk_bytes / 2**20:g} MiB (LBFL_ALLREDUCE_CHUNK_MB)")
        print(f"{'model':10s} {'params':>10s} {'tensors':>8s} {'flat ms':>9s} {'of it MPI ms':>13s} "
              f"{'unsliced ms':>12s} {'per-tensor ms':>14s} {'unsliced/flat':>14s} {'per-tensor/flat':>16s}")
    for name in args.model or ["cnn", "resnet18"]:
        model = build_model(name, shapes.get(name, (3, 32, 32)), 10).to(device)
        for q in model.parameters():
            q.grad = torch.randn_like(q)
        bsp = BSPSync(comm, model)

        def per_tensor():
            for q in bsp.params:
                flat = q.grad.reshape(-1)
                comm.allreduce_(flat)
                flat.div_(comm.world_size)

        flat_t = median_time(lambda: bsp.sync_grads(0, 1), comm, args.reps)
        mpi_t = median_time(lambda: comm.allreduce_(bsp.grads.buf), comm, args.reps)
        sliced, comm.chunk_bytes = comm.chunk_bytes, 0
        whole_t = median_time(lambda: bsp.sync_grads(0, 1), comm, args.reps)  # one Allreduce, no slicing
        comm.chunk_bytes = sliced
        each_t = median_time(per_tensor, comm, args.reps)
        if comm.rank == 0:
            n = sum(q.numel() for q in bsp.params)
            print(f"{name:10s} {n:10d} {len(bsp.params):8d} {flat_t * 1e3:9.2f} {mpi_t * 1e3:13.2f} "
                  f"{whole_t * 1e3:12.2f} {each_t * 1e3:14.2f} {whole_t / flat_t:14.2f} {each_t / flat_t:16.2f}")


if __name__ == "__main__":
    main()
