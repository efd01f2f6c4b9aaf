"""4-rank jobs sharing one GPU, one per sync mode, each against the same job on CPU.

Run: python benchmarks/gpu_jobs.py OUT_DIR [--ranks 4] [--steps 30] [--parallel 1] [--markdown FILE] [--json FILE]
     python benchmarks/gpu_jobs.py OUT_DIR --dry ...   (each job once on CPU, compared with itself: the
                                                         plumbing, for the dry run)

For bsp, fedavg, topk (compressed BSP), dynamic (dynamic batching) and teacher (the learned gradient
transform), ``mpiexec -n RANKS lbfl train`` runs on the digits set twice: once on the GPU (every rank on
cuda:0, the MPI data plane staging through pinned host memory) and once with CUDA hidden
(``CUDA_VISIBLE_DEVICES=``). Both use ``NVIDIA_TF32_OVERRIDE=0`` so the GPU computes in true fp32.
Reported: the relative L2 difference of the final global models, the final test accuracies and the
median step times. The check passes when every compared model difference is below ``--tol`` (default
2e-2: the two devices' float rounding differs, and 30 steps amplify it) and every compared accuracy
is within ``--acc-tol``; it exits 1 otherwise. ``--parallel N`` runs N jobs at once (the GPU and
CPU jobs of all modes are independent), which is what fits the check into a short GPU slot.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rows import append_row

COMMON = ["train.steps={steps}", "train.eval_every=0", "train.batch_size=16", "train.lr=0.05", "data.name=digits",
          "model.name=cnn"]
# mode -> (overrides, what is compared). "model": the final models' relative L2 difference below --tol.
# "acc": final test accuracies within --acc-tol, for runs that legitimately take other paths on the
# two devices: dynamic batching allocates from measured throughput, and the teacher samples its noise
# from the device's generator.
MODES = {
    "bsp": (["sync.bucket_mb=0.1"], "model"),
    "fedavg": (["sync.mode=fedavg", "sync.period=5"], "model"),
    "topk": (["compress.method=topk", "compress.density=0.05"], "model"),
    "dynamic": (["batching.mode=dynamic", "batching.interval=5", "hetero.slowdown={slowdown}"], "acc"),
    "teacher": (["scaling.method=teacher", "scaling.small_batch=4", "scaling.teacher_steps=5"], "acc"),
}


def run(out: Path, ranks: int, overrides: list[str], cpu: bool) -> dict:
    env = dict(os.environ, NVIDIA_TF32_OVERRIDE="0", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    cmd = [mpiexec, "-n", str(ranks), "--oversubscribe", sys.executable, "-m", "lbfl_mpi", "train",
           "--set", f"run.out_dir={out}", "--set", "run.overwrite=true"]
    for o in overrides:
        cmd += ["--set", o]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode:
        print(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"error": f"exit {p.returncode}"}
    import h5py

    with h5py.File(out / "rank0000.h5", "r") as h:
        t_step = float(np.median(h["steps/t_step"][:]))
        device = str(h.attrs["device"])
    model = torch.load(out / "model.pt", map_location="cpu")
    flat = torch.cat([v.double().reshape(-1) for v in model.values() if v.is_floating_point()])
    summary = json.loads((out / "summary.json").read_text())
    return {"flat": flat, "acc": summary["final_test_acc"], "t_step": t_step, "device": device}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--tol", type=float, default=2e-2)
    p.add_argument("--acc-tol", type=float, default=0.1)
    p.add_argument("--parallel", type=int, default=1, help="jobs run at once")
    p.add_argument("--dry", action="store_true", help="run each job once on CPU and compare it with itself (plumbing)")
    p.add_argument("--markdown")
    p.add_argument("--json", help="append one raw JSON row per mode to this file")
    args = p.parse_args()
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("gpu_jobs.py needs a CUDA device (or --dry)")
    if shutil.which("mpiexec") is None and shutil.which("mpirun") is None:
        raise SystemExit("gpu_jobs.py: no mpiexec or mpirun on PATH")
    if args.parallel < 1:
        raise SystemExit(f"gpu_jobs.py: --parallel {args.parallel}: must be >= 1")
    common = [c.format(steps=args.steps) for c in COMMON]
    slowdown = "[" + ", ".join(["1"] * (args.ranks - 1) + ["2"]) + "]"  # the last rank twice as slow
    modes = {m: ([o.format(slowdown=slowdown) for o in extra], check) for m, (extra, check) in MODES.items()}
    # the dry run checks the plumbing only: each mode runs once, on CPU, and is compared with itself
    jobs = [(mode, dev) for mode in MODES for dev in (("cpu",) if args.dry else ("gpu", "cpu"))]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {job: pool.submit(run, Path(args.out_dir) / f"{job[0]}_{job[1]}", args.ranks,
                                    common + modes[job[0]][0], job[1] == "cpu") for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    if args.dry:
        results.update({(mode, "gpu"): results[(mode, "cpu")] for mode in MODES})
    rows, ok = [], True
    for mode, (_extra, check) in modes.items():
        g, c = results[(mode, "gpu")], results[(mode, "cpu")]
        if "error" in g or "error" in c:
            ok = False
            rows.append(f"| {mode} | - | - | - | - | - | - | "
                        f"FAIL: gpu {g.get('error', 'ok')}, cpu {c.get('error', 'ok')} |")
            print(rows[-1], flush=True)
            append_row(args.json, "gpu_jobs", {"mode": mode, "ok": False, "gpu_error": g.get("error"),
                                               "cpu_error": c.get("error")})
            continue
        diff = float((g["flat"] - c["flat"]).norm() / c["flat"].norm())
        good = diff < args.tol if check == "model" else abs(g["acc"] - c["acc"]) <= args.acc_tol
        ok &= good
        rows.append(f"| {mode} | {g['device']} | {diff:.2e} | {g['acc']:.4f} | {c['acc']:.4f} | "
                    f"{g['t_step'] * 1e3:.2f} | {c['t_step'] * 1e3:.2f} | {check}: {'ok' if good else 'FAIL'} |")
        print(rows[-1], flush=True)
        append_row(args.json, "gpu_jobs", {"mode": mode, "gpu_device": g["device"], "model_rel_diff": diff,
                                           "gpu_acc": g["acc"], "cpu_acc": c["acc"], "gpu_t_step": g["t_step"],
                                           "cpu_t_step": c["t_step"], "check": check, "ok": bool(good),
                                           "ranks": args.ranks, "steps": args.steps, "dry": args.dry})
    head = [("DRY RUN, each job once on CPU, compared with itself: " if args.dry else "")
            + f"{args.ranks} ranks sharing one GPU vs the same job on CPU; {args.steps} steps, cnn on digits, "
            f"batch 16 per rank; tolerance {args.tol:g} on the relative L2 difference of the final models "
            f"(check 'model'), {args.acc_tol:g} on the final accuracy (check 'acc')", "",
            "| mode | gpu device | model rel. diff | gpu acc | cpu acc | gpu t_step ms | cpu t_step ms | check |",
            "|---|---|---|---|---|---|---|---|"]
    text = "\n".join(head + rows) + "\n"
    if args.markdown:
        Path(args.markdown).write_text(text)
    print("gpu jobs " + ("OK" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
