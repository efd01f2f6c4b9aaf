"""The paper's memory model (Eq. 3) and compute model (Eq. 2's t_c) against the device, per batch size.

Run: python benchmarks/gpu_models.py --part memory|compute [--model resnet18 --model resnet50 --model vgg11]
         [--device cuda|cpu] [--probes 8,16,32,64,128] [--holdouts 48,96,192,256] [--budget-gib 8]
         [--markdown FILE] [--json FILE]

memory: Eq. 3, M_total(b) = M_model + M_grad + M_opt + M_act(b) + M_batch(b), fitted as ``lbfl plan``
    fits it (plan/memory.py: analytic static terms, saved-for-backward bytes counted at the probe
    batches, lines in b; on CUDA calibrated to the allocator's peak of one real step at each probe,
    the remainder fitted as M_other(b)), then compared at held-out batches with
    ``torch.cuda.max_memory_allocated`` over one real SGD step (momentum 0.9). Beside it, the
    counted terms alone and their error, which shows how much the allocator adds (workspaces,
    backward temporaries, rounding). The paper's Fig. 4b reports 0.08-20.45 %. Then the largest
    batch the fit permits under ``--budget-gib`` (5 % of it kept free) is allocated for real, once
    with its peak read and once under ``torch.cuda.set_per_process_memory_fraction`` of the budget,
    and so is the next power of two: the first must fit, the second must not.
    Pass: held-out Eq. 3 error <= 25 % at every batch, the planned batch fits, the next power of two
    does not.
compute: t_c(b) = alpha + beta b (plan/compute.py), timed in interleaved rounds at the probe and
    held-out batches together (so drift cannot favour either), fitted on the probes, compared at the
    held-out batches. The paper's Fig. 5 reports 0.6-15.7 %. Pass: every held-out error <= 20 %.

On CPU (the dry run) no allocator is read: the memory rows compare the counted bytes only, and the
fits/does-not-fit check is not made.
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rows import append_row

from lbfl_mpi.models import build_model
from lbfl_mpi.plan.compute import fit_from_probes, time_interleaved
from lbfl_mpi.plan.memory import activation_bytes, fit_memory, measure_peak_bytes

SHAPE, CLASSES, MIB = (3, 32, 32), 10, 2**20
MEM_TOL, TC_TOL = 0.25, 0.20


def _ints(text: str) -> list[int]:
    out = [int(t) for t in text.split(",") if t.strip()]
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive batch sizes")
    return out


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def runs_under_fraction(model, b: int, device, budget: float) -> str:
    """'fits' or 'OOM': one SGD step at batch ``b`` (on a copy of the host ``model``) with the allocator
    capped at ``budget`` bytes."""
    total = torch.cuda.get_device_properties(device).total_memory
    _free()
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    work = None
    try:
        work = copy.deepcopy(model).to(device)
        opt = torch.optim.SGD(work.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(b, *SHAPE, device=device)
        y = torch.randint(0, CLASSES, (b,), device=device)
        F.cross_entropy(work(x), y).backward()
        opt.step()
        torch.cuda.synchronize(device)
        return "fits"
    except torch.cuda.OutOfMemoryError:
        return "OOM"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        del work
        _free()


def memory_rows(name: str, device, probes, holdouts, budget: float, emit_row) -> tuple[list[str], str, bool]:
    """(held-out table rows, the planned-batch row, whether both checks passed) for one model."""
    torch.manual_seed(0)
    model = build_model(name, SHAPE, CLASSES)  # stays on the host: each measurement moves its own copy
    # as `lbfl plan` fits it: on CUDA calibrated to the allocator's peaks at the probes (M_other)
    mem = fit_memory(copy.deepcopy(model), SHAPE, CLASSES, "sgd", 0.9, device, probes)
    _free()
    cuda = device.type == "cuda"
    lines, ok = [], True
    for b in holdouts:
        pred, counted = mem.predict(b), mem.counted(b)
        if cuda:
            real = measure_peak_bytes(copy.deepcopy(model), SHAPE, CLASSES, b, device)
            err, counted_err = abs(pred - real) / real, abs(counted - real) / real
            ok &= err <= MEM_TOL
            lines.append(f"| {name} | {b} | {counted / MIB:.1f} | {100 * counted_err:.2f} | {pred / MIB:.1f} | "
                         f"{real / MIB:.1f} | {100 * err:.2f} |")
            emit_row({"model": name, "batch": b, "eq3_bytes": pred, "counted_bytes": counted, "cuda_peak_bytes": real,
                      "eq3_err": err, "counted_err": counted_err, "other_bytes": mem.other(b)})
        else:
            x = torch.randn(b, *SHAPE, device=device)
            y = torch.randint(0, CLASSES, (b,), device=device)
            real = mem.static + activation_bytes(model, x, y) + x.nbytes + y.nbytes
            err = abs(pred - real) / real
            lines.append(f"| {name} | {b} | {counted / MIB:.1f} | - | {pred / MIB:.1f} | counted {real / MIB:.1f} | "
                         f"{100 * err:.2f} |")
            emit_row({"model": name, "batch": b, "eq3_bytes": pred, "counted_bytes": real, "eq3_err": err})
    max_b = mem.max_batch(budget)
    nxt = 1 << max(1, max_b).bit_length()  # the next power of two above max_b
    if cuda:
        peak = (lambda b: measure_peak_bytes(copy.deepcopy(model), SHAPE, CLASSES, b, device))
        p_max, p_next = peak(max_b), peak(nxt)
        r_max = runs_under_fraction(model, max_b, device, budget)
        r_next = runs_under_fraction(model, nxt, device, budget)
        good = p_max <= budget and p_next > budget and r_max == "fits" and r_next == "OOM"
        ok &= good
        fit = (f"| {name} | {budget / 2**30:.2f} GiB | {max_b} | {p_max / MIB:.0f} MiB, {r_max} | {nxt} | "
               f"{p_next / MIB:.0f} MiB, {r_next} | {'ok' if good else 'FAIL'} |")
        emit_row({"model": name, "budget_bytes": budget, "max_batch": max_b, "peak_at_max": p_max, "run_at_max": r_max,
                  "next_pow2": nxt, "peak_at_next": p_next, "run_at_next": r_next, "ok": good})
    else:
        fit = f"| {name} | {budget / 2**30:.2f} GiB | {max_b} | not measurable on CPU | {nxt} | - | - |"
        emit_row({"model": name, "budget_bytes": budget, "max_batch": max_b, "next_pow2": nxt})
    _free()
    return lines, fit, ok


def part_memory(args, device, emit_row) -> tuple[list[str], bool]:
    budget = args.budget_gib * 2**30
    rows, fits, ok = [], [], True
    for name in args.model:
        lines, fit, good = memory_rows(name, device, args.probes, args.holdouts, budget, emit_row)
        rows += lines
        fits.append(fit)
        ok &= good
        print(f"memory {name}: {'ok' if good else 'FAIL'}", flush=True)
    peak_head = "cuda peak MiB" if device.type == "cuda" else "measured MiB"
    md = [f"Eq. 3 fitted on probe batches {args.probes} as `lbfl plan` fits it: counted bytes (analytic static "
          "terms, saved-for-backward storages, input bytes), and on CUDA calibrated to "
          "`torch.cuda.max_memory_allocated` of one SGD step at each probe (M_other, the uncounted remainder, "
          f"fitted as a line); predicted at held-out batches against the allocator's peak there; {SHAPE} inputs, "
          f"{CLASSES} classes, SGD momentum 0.9, fp32. The counted terms alone are shown with their error. Paper "
          f"Fig. 4b: 0.08-20.45 %. Pass: calibrated Eq. 3 error <= {100 * MEM_TOL:.0f} %.", "",
          f"| model | held-out b | counted MiB | counted err % | Eq. 3 MiB | {peak_head} | Eq. 3 err % |",
          "|---|---|---|---|---|---|---|", *rows, "",
          "Largest batch Eq. 3 permits under the budget, allocated for real (peak; and one step with "
          "`set_per_process_memory_fraction` at the budget), and the next power of two:", "",
          "| model | budget | planned b | at planned b | next 2^k | at 2^k | check |",
          "|---|---|---|---|---|---|---|", *fits]
    return md, ok


def part_compute(args, device, emit_row) -> tuple[list[str], bool]:
    rows, ok = [], True
    sizes = sorted(set(args.probes) | set(args.holdouts))
    for name in args.model:
        torch.manual_seed(0)
        model = build_model(name, SHAPE, CLASSES).to(device)
        timed = time_interleaved(model, SHAPE, CLASSES, sizes, device, rounds=args.rounds, repeats=args.repeats)
        comp = fit_from_probes([timed[b] for b in args.probes])
        errs = []
        for b in args.holdouts:
            real, pred = timed[b].t_compute, comp.t_compute(b)
            err = abs(pred - real) / real
            errs.append(err)
            rows.append(f"| {name} | {b} | {real * 1e3:.2f} | {pred * 1e3:.2f} | {100 * err:.2f} | "
                        f"{b / real:,.0f} |")
            emit_row({"model": name, "batch": b, "t_c": real, "t_c_predicted": pred, "err": err,
                      "alpha": comp.alpha, "beta": comp.beta})
        good = max(errs) <= TC_TOL
        ok &= good
        print(f"compute {name}: alpha {comp.alpha * 1e3:.2f} ms, beta {comp.beta * 1e3:.4f} ms/sample, "
              f"held-out err median {100 * statistics.median(errs):.2f} % max {100 * max(errs):.2f} % "
              f"{'ok' if good else 'FAIL'}", flush=True)
        del model
        _free()
    md = [f"t_c = alpha + beta b fitted on probe batches {args.probes}, timed in {args.rounds} interleaved rounds "
          f"with the held-out batches; fp32 SGD steps on {SHAPE} inputs. Paper Fig. 5: 0.6-15.7 %. "
          f"Pass: every held-out error <= {100 * TC_TOL:.0f} %.", "",
          "| model | held-out b | t_c ms | predicted ms | err % | samples/s |", "|---|---|---|---|---|---|", *rows]
    return md, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", required=True, choices=("memory", "compute"))
    ap.add_argument("--model", action="append", help="registry model (repeatable); default resnet18, resnet50, vgg11")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--probes", type=_ints,
                    help="fit batches (default: memory 8,16,32,64,128; compute 32,64,128,256,512)")
    ap.add_argument("--holdouts", type=_ints,
                    help="held-out batches (default: memory 48,96,192,256; compute 96,192,384)")
    ap.add_argument("--budget-gib", type=float, default=8.0, help="memory: the stated budget for the planned batch")
    ap.add_argument("--rounds", type=int, default=3, help="compute: interleaved timing rounds")
    ap.add_argument("--repeats", type=int, default=3, help="compute: timed steps per size and round")
    ap.add_argument("--markdown", help="write the tables here")
    ap.add_argument("--json", help="append raw rows here")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device (use --device cpu for the dry run)")
    if args.budget_gib <= 0:
        ap.error(f"--budget-gib {args.budget_gib}: must be > 0")
    args.model = args.model or ["resnet18", "resnet50", "vgg11"]
    mem = args.part == "memory"
    args.probes = args.probes or ([8, 16, 32, 64, 128] if mem else [32, 64, 128, 256, 512])
    args.holdouts = args.holdouts or ([48, 96, 192, 256] if mem else [96, 192, 384])
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    torch.backends.cudnn.benchmark = False
    emit = lambda row: append_row(args.json, args.part + "_model", row)
    md, ok = (part_memory if mem else part_compute)(args, device, emit)
    text = "\n".join(md) + "\n"
    print(text, end="")
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0 if ok or device.type == "cpu" else 1


if __name__ == "__main__":
    sys.exit(main())
