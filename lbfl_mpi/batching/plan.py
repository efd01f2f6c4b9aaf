"""``lbfl plan``: probe this rank's device, fit the memory model (Eq. 3) and the compute model
(t_c = alpha + beta b, t_mov = gamma + delta b), check both at held-out batch sizes, and recommend a
batch: the throughput knee (95 % of the best measured samples/s) capped by the largest batch that fits
the memory budget.

"Measured" memory is static (analytic) + saved-for-backward bytes + batch bytes at that batch; on GPU
``torch.cuda.max_memory_allocated`` of a real step is reported beside it.
"""
from __future__ import annotations

import statistics

import torch

from ..data import load_dataset
from ..models import build_model
from .compute import fit_from_probes, time_interleaved
from .memory import activation_bytes, fit_memory, measure_peak_bytes


def plan_rank(cfg, comm, budget_bytes: float | None, probes: list[int], holdouts: list[int],
              rounds: int = 3, repeats: int = 3) -> dict:
    device = comm.pick_device()
    bundle = load_dataset(cfg.data, cfg.run.seed)
    shape, classes = tuple(bundle.input_shape), bundle.num_classes
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model.name, shape, classes, cfg.model.norm).to(device)
    mem = fit_memory(model, shape, classes, cfg.train.optimizer, cfg.train.momentum, device, probes)
    # probes and held-out sizes are timed in the same interleaved rounds, so drift cannot favour either
    timed = time_interleaved(model, shape, classes, sorted(set(probes) | set(holdouts)), device,
                             rounds=rounds, repeats=repeats)
    comp = fit_from_probes([timed[b] for b in probes])
    if budget_bytes is None and device.type == "cuda":
        budget_bytes = float(torch.cuda.get_device_properties(device).total_memory)
    rows = []
    for b in sorted(set(probes) | set(holdouts)):
        x = torch.randn(b, *shape, device=device)
        y = torch.randint(0, classes, (b,), device=device)
        measured = mem.static + activation_bytes(model, x, y) + x.nbytes + y.nbytes
        del x, y
        probe = timed[b]
        predicted_tc = comp.t_compute(b)
        rows.append({
            "batch": b, "held_out": b not in probes,
            "mem_measured": int(measured), "mem_predicted": float(mem.predict(b)),
            "mem_err": abs(mem.predict(b) - measured) / measured,
            "mem_peak_cuda": measure_peak_bytes(model, shape, classes, b, device),
            "t_compute": probe.t_compute, "t_compute_predicted": predicted_tc,
            "t_compute_err": abs(predicted_tc - probe.t_compute) / probe.t_compute,
            "t_mov": probe.t_mov, "samples_per_s": b / (probe.t_compute + probe.t_mov),
        })
    held = [r for r in rows if r["held_out"]] or rows
    max_b = mem.max_batch(budget_bytes) if budget_bytes else None
    return {
        "rank": comm.rank, "device": str(device), "model": cfg.model.name, "input_shape": list(shape),
        "params": sum(p.numel() for p in model.parameters()),
        "static_bytes": {"model": mem.model_bytes, "grad": mem.grad_bytes, "opt": mem.opt_bytes},
        "act_bytes_per_sample": mem.act_slope, "batch_bytes_per_sample": mem.batch_slope,
        "alpha": comp.alpha, "beta": comp.beta, "gamma": comp.gamma, "delta": comp.delta,
        "budget_bytes": budget_bytes, "max_batch": max_b, "recommended_batch": comp.recommended_batch(max_b),
        "mem_err_median": statistics.median(r["mem_err"] for r in held),
        "mem_err_max": max(r["mem_err"] for r in held),
        "t_compute_err_median": statistics.median(r["t_compute_err"] for r in held),
        "t_compute_err_max": max(r["t_compute_err"] for r in held),
        "rows": rows,
    }


def format_plan(p: dict) -> str:
    mib = 2**20
    lines = [f"== rank {p['rank']} on {p['device']}: {p['model']} {tuple(p['input_shape'])}, "
             f"{p['params']:,} parameters",
             f"   static: model {p['static_bytes']['model'] / mib:.1f} MiB, grad {p['static_bytes']['grad'] / mib:.1f}"
             f" MiB, optimizer {p['static_bytes']['opt'] / mib:.1f} MiB; per sample: activations "
             f"{p['act_bytes_per_sample'] / 1024:.1f} KiB, batch {p['batch_bytes_per_sample'] / 1024:.1f} KiB",
             f"   t_c = {p['alpha'] * 1e3:.2f} ms + {p['beta'] * 1e3:.3f} ms x b;  "
             f"t_mov = {p['gamma'] * 1e3:.3f} ms + {p['delta'] * 1e6:.2f} us x b",
             f"   {'b':>5s} {'held-out':>8s} {'mem MiB':>9s} {'pred MiB':>9s} {'err %':>6s} {'cuda peak':>9s} "
             f"{'t_c ms':>8s} {'pred ms':>8s} {'err %':>6s} {'samples/s':>10s}"]
    for r in p["rows"]:
        peak = f"{r['mem_peak_cuda'] / mib:9.1f}" if r["mem_peak_cuda"] else f"{'-':>9s}"
        lines.append(f"   {r['batch']:5d} {'yes' if r['held_out'] else '':>8s} {r['mem_measured'] / mib:9.1f} "
                     f"{r['mem_predicted'] / mib:9.1f} {100 * r['mem_err']:6.2f} {peak} {r['t_compute'] * 1e3:8.2f} "
                     f"{r['t_compute_predicted'] * 1e3:8.2f} {100 * r['t_compute_err']:6.2f} {r['samples_per_s']:10.1f}")
    budget = f"{p['budget_bytes'] / 2**30:.1f} GiB" if p["budget_bytes"] else "none given"
    lines.append(f"   memory budget {budget}: largest permissible batch "
                 f"{p['max_batch'] if p['max_batch'] is not None else '-'}; recommended batch "
                 f"{p['recommended_batch']} (95 % of the best measured throughput)")
    lines.append(f"   held-out error: memory median {100 * p['mem_err_median']:.2f} % max {100 * p['mem_err_max']:.2f} %;"
                 f" t_compute median {100 * p['t_compute_err_median']:.2f} % max {100 * p['t_compute_err_max']:.2f} %")
    return "\n".join(lines)
