"""Top-k selection (exact vs sampled) and the sparse exchange vs a dense allreduce, side by side.

Run: mpiexec -n 2 --oversubscribe python benchmarks/bench_topk.py [--reps 5] [--sizes 1M,11M,25M] [--batch 32]
     (1 rank also works: the exchange columns are then "-")

For each device (CPU, and the GPU from Comm.pick_device when CUDA is available), flat size and density,
one row:
- exact / sampled selection time (lbfl_mpi.compress.topk.topk_exact / topk_sampled on a random normal
  vector, each rank its own vector), each divided by one forward+backward step of the matching model
  (1M row -> registry ``cnn``, whose real parameter count is printed; 11M -> resnet18; 25M -> resnet50;
  all on (3, 32, 32) inputs at ``--batch`` per rank), and sampled / exact;
- the realised density error (kept - k) / k: 0 for exact, the median over calls for sampled (range in
  brackets);
- bytes and time of the sparse exchange (what lbfl_mpi.exchange.sparse_average does on the exact
  selection: header Allgather + payload Allgatherv + the scatter-add into a reused dense vector, as the
  top-k exchange does, then the division; "of it MPI" is the two collectives alone) versus one
  comm.allreduce_ of a float32 buffer of numel + 1 (the dense BSP collective, without packing).
Times are medians over reps of the slowest rank, after one warm-up call; CUDA is synchronised inside
each timed call.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import median_time, slowest_median, sync
from gpu_rows import append_row

from lbfl_mpi.comm.world import Comm, cpu_threads
from lbfl_mpi.compress.topk import k_for, topk_exact, topk_sampled
from lbfl_mpi.config import CompressConfig
from lbfl_mpi.exchange.topk import sparse_sum_
from lbfl_mpi.models import build_model

# label -> (flat size, model whose fwd+bwd is the time unit). 11M/25M are the resnet18/resnet50
# parameter counts at 10 classes; the 1M row's model (cnn) is smaller, its real count is printed.
SIZES = {
    "1M": (1_000_000, "cnn"),
    "11M": (11_173_962, "resnet18"),
    "25M": (23_520_842, "resnet50"),
}
LABELS = {"1M": "1M", "11M": "11M (ResNet-18)", "25M": "25M (ResNet-50)"}
DENSITIES = (0.01, 0.001)
INPUT = (3, 32, 32)


class Laps:
    """The clock ``lbfl_mpi.exchange.topk.sparse_sum_`` laps its parts into: per call, seconds of its
    "sync" part (the header Allgather + payload Allgatherv) and of the rest (packing, scatter-add back
    to dense)."""

    def __init__(self, device):
        self.device, self.calls = device, []

    def start(self):
        sync(self.device)
        self.calls.append({})
        self.t = time.perf_counter()

    def lap(self, name):
        sync(self.device)
        now = time.perf_counter()
        self.calls[-1][name] = self.calls[-1].get(name, 0.0) + now - self.t
        self.t = now

    def median_slowest(self, name, comm):
        """Like median_time: drop the warm-up call, slowest rank per call, median over calls."""
        return slowest_median([c.get(name, 0.0) for c in self.calls[1:]], comm)


def step_time(name, device, batch, comm, reps):
    """(params, seconds) of one forward+backward+zero_grad of registry model ``name``."""
    torch.manual_seed(0)
    model = build_model(name, INPUT, 10).to(device).train()
    x = torch.randn(batch, *INPUT, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    t = median_time(fwd_bwd, comm, reps, device)
    return sum(p.numel() for p in model.parameters() if p.requires_grad), t  # the model goes with this frame


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (selection, exchange)")
    p.add_argument("--model-reps", type=int, default=3, help="timed repetitions of the model step")
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ", ".join(SIZES))
    p.add_argument("--batch", type=int, default=32, help="per-rank batch of the fwd+bwd step")
    p.add_argument("--device", action="append", choices=("cpu", "cuda"),
                   help="repeatable; default cpu, and cuda when available")
    p.add_argument("--json", metavar="FILE", help="append one raw JSON row per printed row to this file")
    args = p.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            p.error(f"--sizes: unknown size {s!r} (choose from {', '.join(SIZES)})")

    comm = Comm()
    gpu = comm.pick_device()  # one place decides the device
    torch.set_num_threads(cpu_threads(comm.local_size))  # CPU rows: the cores the ranks share, also on GPU hosts
    threads = torch.get_num_threads()
    kinds = args.device or (["cpu", "cuda"] if gpu.type == "cuda" else ["cpu"])
    if "cuda" in kinds and gpu.type != "cuda":
        p.error("--device cuda: this rank has no CUDA device")
    devices = [torch.device("cpu")] * ("cpu" in kinds) + [gpu] * ("cuda" in kinds)
    ccfg = CompressConfig()  # sampled selection at the config defaults

    if comm.rank == 0:
        print(f"ranks={comm.world_size} device={gpu} torch={torch.__version__} threads/rank={threads} "
              f"reps={args.reps} model_reps={args.model_reps} batch={args.batch}/rank input={INPUT} "
              f"sampled: sample_fraction={ccfg.sample_fraction} tolerance={ccfg.tolerance}")
        if comm.world_size == 1:
            print("1 rank: exchange columns skipped")
        print(f"{'dev':4s} {'size':16s} {'density':>7s} {'k':>7s} {'model':8s} {'params':>9s} "
              f"{'step ms':>8s} {'exact ms':>9s} {'sampl ms':>9s} {'exact/step':>10s} {'sampl/step':>10s} "
              f"{'sampl/exact':>11s} {'err exact':>9s} {'err sampled (range)':>22s} "
              f"{'sparse B':>10s} {'dense B':>10s} {'dense/sparse B':>14s} "
              f"{'sparse ms':>9s} {'of it MPI':>11s} {'dense ms':>9s} {'sparse/dense t':>14s}", flush=True)

    for device in devices:
        gen = torch.Generator(device=device)
        for label in sizes:
            bench_size(args, comm, device, gen, label, ccfg)


def selection(x, k: int, gen, ccfg, comm, reps: int, device):
    """(exact s, sampled s, the exact indices, every rank's sampled density errors sorted)."""
    t_exact = median_time(lambda: topk_exact(x, k), comm, reps, device)
    kept = []

    def sampled():
        kept.append(topk_sampled(x, k, gen, ccfg.sample_fraction, ccfg.tolerance).numel())

    t_sampled = median_time(sampled, comm, reps, device)
    errs = sorted(e for errs in comm.allgather_obj([(c - k) / k for c in kept]) for e in errs)
    return t_exact, t_sampled, topk_exact(x, k), errs


def exchange_cells(comm, x, idx, sparse_out, dense_buf, reps: int, device) -> str:
    """The exchange columns: bytes and seconds of the sparse exchange of ``x[idx]`` against a dense
    allreduce of ``dense_buf``."""
    values = x[idx]
    out = {}
    laps = Laps(device)

    def sparse():  # lbfl_mpi.exchange.sparse_average: sparse_sum_ then the division, its parts lapped
        laps.start()
        total, out["bytes"] = sparse_sum_(comm, values, idx, 1.0, sparse_out, laps)
        out["dense"] = sparse_out.div_(total)

    t_sparse = median_time(sparse, comm, reps, device)
    t_mpi = laps.median_slowest("sync", comm)
    t_dense = median_time(lambda: comm.allreduce_(dense_buf), comm, reps, device)
    b_sparse = out["bytes"]
    b_dense = dense_buf.numel() * dense_buf.element_size()
    return (f"{b_sparse:10d} {b_dense:10d} {b_dense / b_sparse:14.1f} "
            f"{t_sparse * 1e3:9.2f} {t_mpi * 1e3:11.2f} {t_dense * 1e3:9.2f} "
            f"{t_sparse / t_dense:14.2f}")


def bench_size(args, comm, device, gen, label: str, ccfg) -> None:
    """The rows of one flat size on one device, one per density (rank 0 prints them)."""
    numel, model_name = SIZES[label]
    params, t_step = step_time(model_name, device, args.batch, comm, args.model_reps)
    cpu_gen = torch.Generator().manual_seed(1000 + comm.rank)  # each rank its own "gradient"
    x = torch.randn(numel, generator=cpu_gen).to(device)
    dense_buf = torch.zeros(numel + 1, dtype=torch.float32, device=device)
    sparse_out = torch.zeros(numel, dtype=torch.float32, device=device)  # reused, as the top-k exchange does
    for density in DENSITIES:
        k = k_for(numel, density)
        gen.manual_seed(7 + comm.rank)
        t_exact, t_sampled, idx_exact, errs = selection(x, k, gen, ccfg, comm, args.reps, device)
        err_exact = (idx_exact.numel() - k) / k
        err_s = f"{statistics.median(errs):+.3f} ({errs[0]:+.3f}..{errs[-1]:+.3f})"
        if comm.world_size > 1:
            ex = exchange_cells(comm, x, idx_exact, sparse_out, dense_buf, args.reps, device)
        else:
            ex = f"{'-':>10s} {'-':>10s} {'-':>14s} {'-':>9s} {'-':>11s} {'-':>9s} {'-':>14s}"
        if comm.rank == 0:
            print(f"{device.type:4s} {LABELS[label]:16s} {density:7.3f} {k:7d} {model_name:8s} "
                  f"{params:9d} {t_step * 1e3:8.1f} {t_exact * 1e3:9.2f} {t_sampled * 1e3:9.2f} "
                  f"{t_exact / t_step:10.3f} {t_sampled / t_step:10.3f} {t_sampled / t_exact:11.2f} "
                  f"{err_exact:+9.3f} {err_s:>22s} {ex}", flush=True)
            append_row(args.json, "bench_topk", {
                "device": device.type, "size": label, "numel": numel, "density": density, "k": k,
                "model": model_name, "step_s": t_step, "exact_s": t_exact, "sampled_s": t_sampled,
                "sampled_over_exact": t_sampled / t_exact, "sampled_err_median": statistics.median(errs),
                "ranks": comm.world_size})

if __name__ == "__main__":
    main()
