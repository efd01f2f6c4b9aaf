"""Overhead of the learned teacher A(.) (Tyagi 2025, Eq. 5b) against the training step it transforms.

Run: python benchmarks/bench_teacher.py [--reps 7] [--hidden 16,32,64] [--device auto|cpu]

For each workload (model, input shape, per-client batch b, micro-batch b_s) one row, all timed side
by side in this run on one device (the GPU when CUDA is available, else CPU):

- step:      one training step as ``scaling.method = "none"`` runs it (forward + backward on b,
             SGD update);
- micro:     the same step split into b / b_s micro-batches whose gradients are kept (what the
             teacher's training pairs need), and micro / step;
- apply:     the teacher's per-step cost when it is used: G~ = mu + s * eps from one forward of the
             per-chunk network written over the gradient, plus the logged scale factor and held-out
             cosine (Teacher.sample_ + cosine; the copy that restores G between calls is not
             timed), and apply / step, for each ``--hidden`` (scaling.teacher_hidden) at chunk 64;
- train:     one teacher training step (at the default scaling.teacher_hidden) on the
             b / b_s - 1 pairs (Teacher.train_step), which only
             runs for ``scaling.teacher_steps`` steps at the start and after each refresh, and
             train / step.

Times are medians over ``--reps`` after one warm-up, interleaved round-robin so that drift of the
machine affects every column alike; CUDA is synchronised inside each timed call.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import SelfTimed, interleave, medians, timed

from lbfl_mpi.config import ScalingConfig
from lbfl_mpi.models import build_model
from lbfl_mpi.scaling.teacher import Teacher, cosine

DEFAULT_HIDDEN = ScalingConfig().teacher_hidden
WORKLOADS = [  # name, model, input shape, b, b_s
    ("mlp fashion-shaped", "mlp", (1, 28, 28), 256, 64),
    ("cnn CIFAR-shaped", "cnn", (3, 32, 32), 64, 16),
    ("resnet18 CIFAR-shaped", "resnet18", (3, 32, 32), 32, 8),
]


def bench(name, model_name, shape, b, b_s, hiddens, reps, device):
    torch.manual_seed(0)
    model = build_model(model_name, shape, 10).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01)
    x = torch.randn(b, *shape, device=device)
    y = torch.randint(0, 10, (b,), device=device)
    sizes = [p.numel() for p in params]
    m = b // b_s
    micro = torch.empty(m, sum(sizes), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def micro_step():
        opt.zero_grad(set_to_none=True)
        for j, (xs, ys) in enumerate(zip(x.split(b_s), y.split(b_s))):
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(xs), ys).backward()
            for v, p in zip(micro[j].split(sizes), params):
                v.copy_(p.grad.reshape(-1))
        for v, p in zip(micro.mean(0).split(sizes), params):
            p.grad.copy_(v.view_as(p))
        opt.step()

    micro_step()
    grads = [p.grad.detach().clone() for p in params]
    as_list = lambda j: [v.view_as(p) for v, p in zip(micro[j].split(sizes), params)]
    smalls = [as_list(j) for j in range(m - 1)]
    teachers = {h: Teacher(sizes, device, chunk=64, hidden=h, seed=0, b_small=b_s) for h in hiddens}

    work = [g.clone() for g in grads]
    sq = torch.stack([g.float().pow(2).sum() for g in grads])  # the trainer has these from Eq. 8

    def apply(h):
        def sample():  # what GradTransform does per step: G <- G~ in place, ratios, held-out cosine
            ratios, new_sq = teachers[h].sample_(work, 3, b, sq)
            float(ratios.mean())
            cosine(work, as_list(m - 1), a_sq=float(new_sq.sum()))

        def run():
            for w, g in zip(work, grads):  # restore G (not timed)
                w.copy_(g)
            return SelfTimed(timed(sample, device))
        return run

    train_h = DEFAULT_HIDDEN if DEFAULT_HIDDEN in hiddens else hiddens[0]
    calls = {"step": step, "micro": micro_step, "train": lambda: teachers[train_h].train_step(grads, smalls, b)}
    calls.update({f"apply_h{h}": apply(h) for h in hiddens})
    med = medians(interleave(calls, reps, 1, 1, device))  # one warm-up each, then rounds of one call each
    n = sum(sizes)
    cells = [f"{name} ({n / 1e6:.2f}M params, b={b}, b_s={b_s})", f"{med['step'] * 1e3:.1f}",
             f"{med['micro'] * 1e3:.1f} ({med['micro'] / med['step']:.2f}x)"]
    cells += [f"{med[f'apply_h{h}'] * 1e3:.2f} ({100 * med[f'apply_h{h}'] / med['step']:.1f} %)" for h in hiddens]
    cells.append(f"{med['train'] * 1e3:.1f} ({100 * med['train'] / med['step']:.0f} %)")
    return "| " + " | ".join(cells) + " |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--hidden", default="16,32,64")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu"))
    args = ap.parse_args()
    hiddens = [int(h) for h in args.hidden.split(",")]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, reps {args.reps}")
    head = ["workload", "step ms", "micro ms"] + [f"apply h={h} ms (of step)" for h in hiddens] + \
        [f"train h={DEFAULT_HIDDEN if DEFAULT_HIDDEN in hiddens else hiddens[0]} ms (of step)"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for w in WORKLOADS:
        print(bench(*w, hiddens, args.reps, device), flush=True)


if __name__ == "__main__":
    main()
