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
- bytes and time of the sparse exchange (lbfl_mpi.exchange.sparse_average on the exact selection:
  header Allgather + payload Allgatherv + the scatter-add into a reused dense vector, as the top-k exchange
  does; "of it MPI" is the two collectives alone) versus one comm.allreduce_ of a float32 buffer of
  numel + 1 (the dense BSP collective, without packing).
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

from lbfl_mpi.comm.world import Comm, cpu_threads
from lbfl_mpi.compress.topk import k_for, topk_exact, topk_sampled
from lbfl_mpi.config import CompressConfig
from lbfl_mpi.exchange import sparse_average
from lbfl_mpi.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rows import append_row  # noqa: E402

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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, comm, reps, device):
    """Median over ``reps`` of the slowest rank's time of ``fn()`` (after one warm-up call)."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(max(ts) for ts in zip(*comm.allgather_obj(times)))


class Laps:
    """The ``timer`` sparse_average laps into: per call, seconds of its "sync" part (the header
    Allgather + payload Allgatherv) and of the rest (packing, scatter-add back to dense)."""

    def __init__(self, device):
        self.device, self.calls = device, []

    def start(self):
        _sync(self.device)
        self.calls.append({})
        self.t = time.perf_counter()

    def lap(self, name):
        _sync(self.device)
        now = time.perf_counter()
        self.calls[-1][name] = self.calls[-1].get(name, 0.0) + now - self.t
        self.t = now

    def median_slowest(self, name, comm):
        """Like median_time: drop the warm-up call, slowest rank per call, median over calls."""
        mine = [c.get(name, 0.0) for c in self.calls[1:]]
        return statistics.median(max(ts) for ts in zip(*comm.allgather_obj(mine)))


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
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    return n, t


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
    torch.set_num_threads(cpu_threads(comm.local_size))  # CPU rows: the cores shared by the ranks, also on GPU hosts
    threads = torch.get_num_threads()
    kinds = args.device or (["cpu", "cuda"] if gpu.type == "cuda" else ["cpu"])
    if "cuda" in kinds and gpu.type != "cuda":
        p.error("--device cuda: this rank has no CUDA device")
    devices = [torch.device("cpu")] * ("cpu" in kinds) + [gpu] * ("cuda" in kinds)
    ccfg = CompressConfig()  # sampled selection at the config defaults
    exchange = comm.world_size > 1

    if comm.rank == 0:
        print(f"ranks={comm.world_size} device={gpu} torch={torch.__version__} threads/rank={threads} "
              f"reps={args.reps} model_reps={args.model_reps} batch={args.batch}/rank input={INPUT} "
              f"sampled: sample_fraction={ccfg.sample_fraction} tolerance={ccfg.tolerance}")
        if not exchange:
            print("1 rank: exchange columns skipped")
        print(f"{'dev':4s} {'size':16s} {'density':>7s} {'k':>7s} {'model':8s} {'params':>9s} "
              f"{'step ms':>8s} {'exact ms':>9s} {'sampl ms':>9s} {'exact/step':>10s} {'sampl/step':>10s} "
              f"{'sampl/exact':>11s} {'err exact':>9s} {'err sampled (range)':>22s} "
              f"{'sparse B':>10s} {'dense B':>10s} {'dense/sparse B':>14s} "
              f"{'sparse ms':>9s} {'of it MPI':>11s} {'dense ms':>9s} {'sparse/dense t':>14s}", flush=True)

    for device in devices:
        gen = torch.Generator(device=device)
        for label in sizes:
            numel, model_name = SIZES[label]
            params, t_step = step_time(model_name, device, args.batch, comm, args.model_reps)
            cpu_gen = torch.Generator().manual_seed(1000 + comm.rank)  # each rank its own "gradient"
            x = torch.randn(numel, generator=cpu_gen).to(device)
            dense_buf = torch.zeros(numel + 1, dtype=torch.float32, device=device)
            sparse_out = torch.zeros(numel, dtype=torch.float32, device=device)  # reused, as the top-k exchange does
            for density in DENSITIES:
                k = k_for(numel, density)
                gen.manual_seed(7 + comm.rank)
                t_exact = median_time(lambda: topk_exact(x, k), comm, args.reps, device)
                kept = []

                def sampled():
                    kept.append(topk_sampled(x, k, gen, ccfg.sample_fraction, ccfg.tolerance).numel())

                t_sampled = median_time(sampled, comm, args.reps, device)
                idx_exact = topk_exact(x, k)
                err_exact = (idx_exact.numel() - k) / k
                errs = sorted(e for errs in comm.allgather_obj([(c - k) / k for c in kept]) for e in errs)
                err_s = f"{statistics.median(errs):+.3f} ({errs[0]:+.3f}..{errs[-1]:+.3f})"

                if exchange:
                    values = x[idx_exact]
                    out = {}
                    laps = Laps(device)

                    def sparse():
                        laps.start()
                        out["dense"], out["bytes"] = sparse_average(comm, values, idx_exact, 1.0, numel, laps,
                                                                    out=sparse_out)

                    t_sparse = median_time(sparse, comm, args.reps, device)
                    t_mpi = laps.median_slowest("sync", comm)
                    t_dense = median_time(lambda: comm.allreduce_(dense_buf), comm, args.reps, device)
                    b_sparse = out["bytes"]
                    b_dense = dense_buf.numel() * dense_buf.element_size()
                    ex = (f"{b_sparse:10d} {b_dense:10d} {b_dense / b_sparse:14.1f} "
                          f"{t_sparse * 1e3:9.2f} {t_mpi * 1e3:11.2f} {t_dense * 1e3:9.2f} "
                          f"{t_sparse / t_dense:14.2f}")
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
            del x, dense_buf, sparse_out


if __name__ == "__main__":
    main()
