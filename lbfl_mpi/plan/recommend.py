"""``lbfl plan``: probe this rank's device, fit the memory model (Eq. 3) and the compute model
(t_c = alpha + beta b, t_mov = gamma + delta b), check both at held-out batch sizes, measure t_sync,
and recommend two batches side by side:

- the throughput knee: the smallest probe reaching 95 % of the best measured ``b / (t_c + t_mov)``;
  it ignores synchronisation;
- the Eq. 2 optimum: the probe minimising the modelled epoch time ``D / B * (t_c + t_mov + t_sync / H)``
  (plan/eq2.py) with the measured t_c and t_mov of that probe and the measured t_sync;

both capped by the largest batch that fits the memory budget.

What is measured where:

- t_c: training steps on a copy of the model, on the batches the data path returns;
- t_mov: the trainer's data path, ``ClientLoader`` over this rank's partition (``data.workers``) plus
  the host-to-device copy (plan/loader_feed.py), timed in the same steps;
- t_sync: the trainer's synchroniser and exchange on the job's data plane, max over ranks of each
  rank's median (plan/sync_time.py); 0 on one rank;
- memory on CPU: the "measured" column is *counted*, not read from an allocator: static (analytic
  M_model + M_grad + M_opt) + the bytes of the storages autograd saves for backward (a
  saved-tensors pack hook, plan/memory.py: ``activation_bytes``) + the input and label bytes.
  It omits backward temporaries, allocator rounding and caching, and any intermediate autograd does
  not save, so on CPU the held-out memory error checks only that these counted bytes are linear in b.
- memory on CUDA: "measured" is ``torch.cuda.max_memory_allocated`` of a real step, and the fit is
  calibrated to it at the probes (plan/memory.py: ``M_other``, the uncounted workspaces and
  temporaries, plus a headroom for the caching allocator), so the held-out error is against the
  allocator and the largest permissible batch is one that runs.
"""
from __future__ import annotations

import copy
import math
import statistics

import torch

from ..data import DataError, load_dataset
from ..data.fits import batch_problem
from ..models import build_model
from .compute import fit_from_probes, time_interleaved
from .eq2 import epoch_time, eq2_optimum, sync_period
from .loader_feed import loader_feed
from .memory import activation_bytes, fit_memory, measure_peak_bytes
from .sync_time import measure_t_sync

MEM_SOURCE = ("counted: analytic M_model+M_grad+M_opt + storages saved for backward (saved-tensors hook) "
              "+ input/label bytes; not an allocator reading")
MEM_SOURCE_CUDA = ("allocator: torch.cuda.max_memory_allocated of one real step; Eq. 3 calibrated to it at the "
                   "probes (M_other = peak - counted, fitted as a line)")


def _agreed(comm, build):
    """``build()`` on every rank, then agree on failure before the collectives that follow, so a rank
    that cannot load its data never leaves the others waiting in a collective. The failing rank
    raises its own error; the others raise a ConfigError naming it (the CLI prints one line, exit 2)."""
    from ..config import ConfigError

    try:
        out, err = build(), None
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks know
        out, err = None, e
    if comm.world_size > 1:
        errors = comm.allgather_obj(None if err is None else str(err))
        if err is None:
            bad = [(r, e) for r, e in enumerate(errors) if e is not None]
            if bad:
                raise ConfigError(f"(rank {bad[0][0]}) {bad[0][1]}")
    if err is not None:
        raise err
    return out


def plan_rank(cfg, comm, budget_bytes: float | None, probes: list[int], holdouts: list[int],
              rounds: int = 3, repeats: int = 3, sync_warmup: int = 2, sync_repeats: int = 5) -> dict:
    """This rank's plan as a JSON-able dict. Collective (t_sync): every rank calls it together, on a
    data plane already started (``comm.start_backend``)."""
    device = comm.pick_device()

    def inputs():
        bundle = load_dataset(cfg.data, cfg.run.seed)
        largest = max([*probes, *holdouts])  # checked before any probe allocates
        problem = batch_problem(f"probe batch {largest}", largest, bundle.input_shape, device=device)
        if problem:
            raise DataError(problem)
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg.model.name, tuple(bundle.input_shape), bundle.num_classes, cfg.model.norm,
                            width=cfg.model.width)
        return bundle, model.to(device), loader_feed(cfg, bundle, comm.rank, comm.world_size, device)

    bundle, model, feed = _agreed(comm, inputs)
    shape, classes = tuple(bundle.input_shape), bundle.num_classes
    try:
        sync = measure_t_sync(cfg, comm, model, device, warmup=sync_warmup, repeats=sync_repeats)
        mem = fit_memory(model, shape, classes, cfg.train.optimizer, cfg.train.momentum, device, probes)
        # probes and held-out sizes are timed in the same interleaved rounds, so drift cannot favour either
        timed = time_interleaved(model, shape, classes, sorted(set(probes) | set(holdouts)), device,
                                 rounds=rounds, repeats=repeats, fetch=feed)
    finally:
        feed.close()
    comp = fit_from_probes([timed[b] for b in probes])
    if budget_bytes is None and device.type == "cuda":
        budget_bytes = float(torch.cuda.get_device_properties(device).total_memory)
    H, D, W = sync_period(cfg.sync.mode, cfg.sync.period), len(bundle.train), comm.world_size
    rows = []
    fitted = {p.batch: p for p in mem.probes}  # the probes' counts and peaks, measured by fit_memory
    for b in sorted(set(probes) | set(holdouts)):
        if b in fitted:
            p = fitted[b]
            counted, peak = mem.static + p.act_bytes + p.batch_bytes, p.peak_bytes
        else:
            x = torch.randn(b, *shape, device=device)
            y = torch.randint(0, classes, (b,), device=device)
            counted = mem.static + activation_bytes(model, x, y) + x.nbytes + y.nbytes
            del x, y
            peak = measure_peak_bytes(copy.deepcopy(model), shape, classes, b, device)  # None on CPU
        measured = counted if peak is None else peak
        probe = timed[b]
        predicted_tc = comp.t_compute(b)
        rows.append({
            "batch": b, "held_out": b not in probes,
            "mem_counted": int(counted), "mem_measured": int(measured), "mem_predicted": float(mem.predict(b)),
            "mem_err": abs(mem.predict(b) - measured) / measured,
            "mem_peak_cuda": peak,
            "t_compute": probe.t_compute, "t_compute_predicted": predicted_tc,
            "t_compute_err": abs(predicted_tc - probe.t_compute) / probe.t_compute,
            "t_mov": probe.t_mov, "samples_per_s": b / (probe.t_compute + probe.t_mov),
            "global_batch": W * b, "t_sync": sync.t_sync,
            "epoch_time": epoch_time(b, probe.t_compute, probe.t_mov, sync.t_sync, H, D, W),
        })
    held = [r for r in rows if r["held_out"]] or rows
    max_b = mem.max_batch(budget_bytes) if budget_bytes else None
    knee = comp.recommended_batch(max_b)
    eq2_b, eq2_t = eq2_optimum(probes, [timed[b].t_compute for b in probes], [timed[b].t_mov for b in probes],
                               sync.t_sync, H, D, W, max_b)
    by_batch = {r["batch"]: r for r in rows}
    plan = {
        "rank": comm.rank, "device": str(device), "model": cfg.model.name, "input_shape": list(shape),
        "params": sum(p.numel() for p in model.parameters()),
        "static_bytes": {"model": mem.model_bytes, "grad": mem.grad_bytes, "opt": mem.opt_bytes},
        "act_bytes_per_sample": mem.act_slope, "batch_bytes_per_sample": mem.batch_slope,
        "other_bytes": mem.other_intercept, "other_bytes_per_sample": mem.other_slope, "mem_headroom": mem.headroom,
        "alpha": comp.alpha, "beta": comp.beta, "gamma": comp.gamma, "delta": comp.delta,
        "budget_bytes": budget_bytes, "max_batch": max_b, "recommended_batch": knee,
        "mem_err_median": statistics.median(r["mem_err"] for r in held),
        "mem_err_max": max(r["mem_err"] for r in held),
        "t_compute_err_median": statistics.median(r["t_compute_err"] for r in held),
        "t_compute_err_max": max(r["t_compute_err"] for r in held),
        "mem_measured_source": MEM_SOURCE_CUDA if mem.calibrated else MEM_SOURCE + "; no allocator is read on CPU",
        "t_mov_source": f"ClientLoader over this rank's partition (data.workers={cfg.data.workers}) + copy to "
                        f"{device}",
        # Eq. 2: epoch = D / B * (t_c + t_mov + t_sync / H), B = world_size * b
        "world_size": W, "dataset_size": D, "sync_mode": cfg.sync.mode, "sync_period": H,
        "backend": sync.backend, "t_sync": sync.t_sync, "t_sync_per_rank": sync.per_rank,
        "t_sync_compress": sync.t_compress, "t_sync_bytes": sync.nbytes, "t_sync_numel": sync.numel,
        "t_sync_exchange": sync.exchange, "t_sync_note": sync.note,
        # None (JSON null) where the batch is the unmeasured memory cap: no NaN even in the rank file's JSON
        "eq2_batch": eq2_b, "eq2_epoch_time": None if math.isnan(eq2_t) else eq2_t,
        "knee_epoch_time": by_batch[knee]["epoch_time"] if knee in by_batch else None,
        "rows": rows,
    }
    plan["warnings"] = plan_warnings(plan, probes)
    return plan


FIT_ERR_WARN = 0.20  # a fit error above this at any probed or held-out batch is warned about


def plan_warnings(p: dict, probes: list[int]) -> list[str]:
    """One-line warnings (``lbfl plan`` prints them on rank 0, and ``--json`` keeps them per rank):
    a memory or t_compute fit error above FIT_ERR_WARN at any batch (the medians can hide one), and an
    Eq. 2 optimum at the smallest or largest probe (the true optimum may lie outside the probed range;
    a probe excluded by the memory budget does not count as an edge)."""
    who = f"rank {p['rank']}: " if p["world_size"] > 1 else ""
    out = []
    for key, what in (("mem_err", "memory fit (Eq. 3)"), ("t_compute_err", "t_compute fit (alpha + beta b)")):
        bad = [r for r in p["rows"] if r[key] > FIT_ERR_WARN]
        if bad:
            worst = max(bad, key=lambda r: r[key])
            out.append(f"{who}the {what} is off by {100 * worst[key]:.1f} % at b={worst['batch']} (above "
                       f"{100 * FIT_ERR_WARN:.0f} % at {len(bad)} of {len(p['rows'])} batches, whatever the median "
                       "says); rerun with more --rounds and --repeats, or probe the batches you will train with")
    edges = sorted(set(probes))
    b = p["eq2_batch"]
    if len(edges) > 1 and p["eq2_epoch_time"] is not None and b in (edges[0], edges[-1]):
        side = "largest" if b == edges[-1] else "smallest"
        hint = "probe larger batches" if b == edges[-1] else "probe smaller batches"
        out.append(f"{who}the Eq. 2 optimum b={b} is the {side} probe, at the edge of the probed range "
                   f"({edges[0]}..{edges[-1]}); {hint}")
    return out


def format_plan(p: dict) -> str:
    mib = 2**20
    cuda = any(r["mem_peak_cuda"] for r in p["rows"])
    lines = [f"== rank {p['rank']} on {p['device']}: {p['model']} {tuple(p['input_shape'])}, "
             f"{p['params']:,} parameters",
             f"   static: model {p['static_bytes']['model'] / mib:.1f} MiB, grad {p['static_bytes']['grad'] / mib:.1f}"
             f" MiB, optimizer {p['static_bytes']['opt'] / mib:.1f} MiB; per sample: saved activations "
             f"{p['act_bytes_per_sample'] / 1024:.1f} KiB, batch {p['batch_bytes_per_sample'] / 1024:.1f} KiB",
             f"   t_c = {p['alpha'] * 1e3:.2f} ms + {p['beta'] * 1e3:.3f} ms x b;  "
             f"t_mov = {p['gamma'] * 1e3:.3f} ms + {p['delta'] * 1e6:.2f} us x b  ({p['t_mov_source']})",
             f"   {'b':>5s} {'held-out':>8s} {'count MiB':>9s} {'pred MiB':>9s} {'err %':>6s} {'cuda peak':>9s} "
             f"{'t_c ms':>8s} {'pred ms':>8s} {'err %':>6s} {'samples/s':>10s}"]
    for r in p["rows"]:
        peak = f"{r['mem_peak_cuda'] / mib:9.1f}" if r["mem_peak_cuda"] else f"{'-':>9s}"
        lines.append(f"   {r['batch']:5d} {'yes' if r['held_out'] else '':>8s} {r['mem_measured'] / mib:9.1f} "
                     f"{r['mem_predicted'] / mib:9.1f} {100 * r['mem_err']:6.2f} {peak} {r['t_compute'] * 1e3:8.2f} "
                     f"{r['t_compute_predicted'] * 1e3:8.2f} {100 * r['t_compute_err']:6.2f} "
                     f"{r['samples_per_s']:10.1f}")
    lines.append("   count MiB = static + bytes autograd saves for backward (saved-tensors hook) + input/label bytes, "
                 "counted, not an allocator reading" + (
                     f"; cuda peak = torch.cuda.max_memory_allocated of one step; pred = count + M_other "
                     f"({p['other_bytes'] / mib:.1f} MiB + {p['other_bytes_per_sample'] / 1024:.1f} KiB x b, fitted "
                     f"to the peaks at the probes), err against the peak; {100 * p['mem_headroom']:.0f} % of the "
                     "budget kept free" if cuda else "; on CPU no allocator is read"))
    budget = f"{p['budget_bytes'] / 2**30:.1f} GiB" if p["budget_bytes"] else "none given"
    lines.append(f"   memory budget {budget}: largest permissible batch "
                 f"{p['max_batch'] if p['max_batch'] is not None else '-'}")
    what = "memory (against the allocator)" if cuda else "counted memory"
    lines.append(f"   held-out error: {what} median {100 * p['mem_err_median']:.2f} % max "
                 f"{100 * p['mem_err_max']:.2f} %; t_compute median {100 * p['t_compute_err_median']:.2f} % max "
                 f"{100 * p['t_compute_err_max']:.2f} %")
    lines += _format_eq2(p)
    return "\n".join(lines)


def _format_eq2(p: dict) -> list[str]:
    H, W = p["sync_period"], p["world_size"]
    if W == 1:
        sync = f"t_sync = 0 ({p['t_sync_note']})"
    else:
        sync = (f"t_sync = {p['t_sync'] * 1e3:.2f} ms ({p['t_sync_exchange']} exchange of "
                f"{p['t_sync_bytes'] / 2**20:.1f} MiB on {p['backend']}; {p['t_sync_note']}; per rank "
                f"{', '.join(f'{t * 1e3:.2f}' for t in p['t_sync_per_rank'])} ms)")
        if p["t_sync_compress"]:
            sync += f", compression {p['t_sync_compress'] * 1e3:.2f} ms apart"
    lines = [f"   Eq. 2: epoch = D/B (t_c + t_mov + t_sync/H), D = {p['dataset_size']} samples, B = {W} x b, "
             f"sync.mode={p['sync_mode']} (H = {H})",
             f"   {sync}",
             f"   {'b':>5s} {'B':>6s} {'t_c ms':>9s} {'t_mov ms':>9s} {'t_sync/H ms':>11s} {'epoch s':>9s}"]
    for r in p["rows"]:
        mark = []
        if r["batch"] == p["recommended_batch"]:
            mark.append("knee")
        if r["batch"] == p["eq2_batch"]:
            mark.append("Eq. 2")
        lines.append(f"   {r['batch']:5d} {r['global_batch']:6d} {r['t_compute'] * 1e3:9.2f} {r['t_mov'] * 1e3:9.3f} "
                     f"{r['t_sync'] / H * 1e3:11.3f} {r['epoch_time']:9.2f}"
                     + (f"  <- {' + '.join(mark)}" if mark else "") + ("  (held out)" if r["held_out"] else ""))
    lines.append(f"   recommended batch: knee {p['recommended_batch']} (95 % of the best measured throughput, "
                 f"ignores t_sync; epoch {_s(p['knee_epoch_time'])})  |  Eq. 2 optimum {p['eq2_batch']} "
                 f"(epoch {_s(p['eq2_epoch_time'])})"
                 + (f"; both among b <= {p['max_batch']}" if p["max_batch"] is not None else ""))
    return lines


def _s(t) -> str:
    return "not measured" if t is None else f"{t:.2f} s"
