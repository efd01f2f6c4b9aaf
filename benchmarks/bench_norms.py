"""Per-step statistics that read every gradient, and the per-step batch fetch, side by side.

Run: python benchmarks/bench_norms.py [--reps 7] [--device auto|cpu] [--models resnet18,resnet50]

Per-layer squared gradient norms (what the trainer logs as grad_norm_sq and what the noise scale and
Eq. 8 read every step), on the gradients of one backward pass of each model:

- f64 copy:   every gradient copied to float64, squared and summed (the exact reference);
- sliced:     :func:`lbfl_mpi.scaling.noise_scale.layer_sq_norms` (float32 norms of 64 Ki-element
              slices, squares summed in float64);
- f32 whole:  one float32 multi-tensor norm per whole tensor (its error grows with the tensor size);
- f64 norm:   the same with float64 accumulation.

Each row: time as a ratio to f64 copy, and the largest relative error over layers against f64 copy.

Batch fetch of the synthetic CIFAR-shaped set at batch 256: the host loader plus the copy to the
device, against the loader that keeps the set on the device (equal on CPU, where nothing moves).

Times are medians over ``--reps`` after one warm-up, interleaved round-robin so that drift of the
machine affects every column alike; CUDA is synchronised inside each timed call.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import interleave, medians

from lbfl_mpi.config import DataConfig
from lbfl_mpi.data import ClientLoader, load_dataset
from lbfl_mpi.models import build_model
from lbfl_mpi.scaling.noise_scale import layer_sq_norms


def round_robin(fns: dict, reps: int, device) -> dict:
    """Median seconds of each of ``fns``: one warm-up call each, then ``reps`` rounds of one call each."""
    return medians(interleave(fns, reps, 1, 1, device))


def f64_copy(ts):
    return torch.stack([t.detach().to(torch.float64).pow(2).sum() for t in ts])


def f32_whole(ts):
    return torch.stack(torch._foreach_norm(ts)).to(torch.float64).square()


def f64_norm(ts):
    return torch.stack(torch._foreach_norm(ts, 2, dtype=torch.float64)).square()


def bench_norms(model_name: str, reps: int, device) -> None:
    model = build_model(model_name, (3, 32, 32), 10).to(device)
    x = torch.randn(32, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    fns = {"f64 copy": f64_copy, "sliced": layer_sq_norms, "f32 whole": f32_whole, "f64 norm": f64_norm}
    med = round_robin({k: (lambda f=f: f(grads)) for k, f in fns.items()}, reps, device)
    ref = f64_copy(grads)
    n = sum(g.numel() for g in grads)
    print(f"{model_name}: {len(grads)} tensors, {n / 1e6:.1f}M values, f64 copy {med['f64 copy'] * 1e3:.2f} ms")
    for k, f in fns.items():
        err = float(((f(grads) - ref).abs() / ref.clamp_min(1e-300)).max())
        print(f"  {k:10s} time x{med[k] / med['f64 copy']:6.3f}   max rel err {err:.1e}")


def bench_fetch(reps: int, device) -> None:
    data = load_dataset(DataConfig(name="synthetic", synthetic_train=8192, synthetic_test=16)).train
    idx = np.arange(len(data))
    host = ClientLoader(data, idx, 256, seed=0, rank=0)
    resident = ClientLoader(data, idx, 256, seed=0, rank=0, device=device)

    def host_step():
        xb, yb = host.next_batch()
        return xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    med = round_robin({"host + copy": host_step, "resident": resident.next_batch}, reps * 5, device)
    print(f"batch fetch, synthetic 3x32x32, b=256: host + copy {med['host + copy'] * 1e3:.3f} ms, "
          f"resident x{med['resident'] / med['host + copy']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu"])
    ap.add_argument("--models", default="resnet18,resnet50")
    a = ap.parse_args()
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else "cpu")
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for m in a.models.split(","):
        bench_norms(m, a.reps, device)
    bench_fetch(a.reps, device)


if __name__ == "__main__":
    main()
