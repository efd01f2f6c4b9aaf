"""Overhead of the federated layer (``fl.clients > 0``; lbfl_mpi/fl/), as ratios from one run.

Run:  python benchmarks/bench_clients.py [--ranks 2] [--clients 100] [--per-round 10] [--rounds 20]
          [--period 5] [--batch 8] [--markdown FILE]

(1) One ``lbfl train`` under ``mpiexec -n RANKS`` (digits, cnn, batch BATCH, FedAvg rounds of PERIOD local
    steps, CLIENTS clients of which PER_ROUND train each round, SCAFFOLD so that every client has a
    control variate and momentum to swap and move). From its rank files, per round: t_round (rank 0's
    ``rounds`` row: moves, local training, exchange, server update) against the ideal, the local
    compute of the round's clients divided over the ranks, sum_i t_train_i / RANKS. Target <= 1.10x.
    Round 0 (first touch of every state) is left out of the median. Also the swap cost per client
    (``t_swap``: its state in and out, against its ``t_train``) and how many states moved.
(2) The store's size for CLIENTS SCAFFOLD clients of resnet18 on CIFAR-shaped input: the tensor bytes
    of one client's state as the federated layer keeps it (control variate, SGD momentum, loader
    position) times CLIENTS, and the time to spill that state to disk and read it back (fl/store.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lbfl_mpi.fl.store import ClientStore, state_bytes  # noqa: E402
from lbfl_mpi.models import build_model  # noqa: E402
from lbfl_mpi.telemetry import open_rank_file, read_group  # noqa: E402


def run_rounds(args, out: Path) -> None:
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    sets = {"run.out_dir": str(out), "data.name": "'digits'", "model.name": "'cnn'", "train.batch_size": args.batch,
            "train.momentum": 0.9, "sync.mode": "'fedavg'", "sync.period": args.period,
            "train.steps": args.period * args.rounds, "train.eval_every": 0, "fl.clients": args.clients,
            "fl.clients_per_round": args.per_round, "fl.algorithm": "'scaffold'"}
    cmd = [mpiexec, "-n", str(args.ranks), "--oversubscribe", sys.executable, "-m", "lbfl_mpi", "train"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        sys.exit(f"lbfl train exited {p.returncode}: {p.stderr[-800:]}")


def round_ratios(out: Path, ranks: int) -> dict:
    clients = []
    for r in range(ranks):
        with open_rank_file(out / f"rank{r:04d}.h5") as f:
            clients.append(read_group(f, "clients"))
            if r == 0:
                rounds = read_group(f, "rounds")
    ratios, swap_share, imbalance, exchange, swaps = [], [], [], [], []
    for i, rnd in enumerate(rounds["round"]):
        per_rank = [float(np.sum(c["t_train"][c["round"] == rnd])) for c in clients]
        ideal = sum(per_rank) / ranks
        if rnd > 0:
            ratios.append(float(rounds["t_round"][i]) / ideal)
            imbalance.append(max(per_rank) / ideal)  # the slowest rank's training sets the round
            exchange.append(float(rounds["t_exchange"][i]) / ideal)
            swaps.append(float(np.sum(clients[0]["t_swap"][clients[0]["round"] == rnd])) / ideal)
    for c in clients:
        later = c["round"] > 0
        swap_share += list(c["t_swap"][later] / c["t_train"][later])
    t_swap = np.concatenate([c["t_swap"][c["round"] > 0] for c in clients])
    return {"round_over_ideal": statistics.median(ratios), "round_over_ideal_max": max(ratios),
            "imbalance": statistics.median(imbalance), "exchange": statistics.median(exchange),
            "swaps_rank0": statistics.median(swaps),
            "swap_ms": 1e3 * float(np.median(t_swap)), "swap_over_train": statistics.median(swap_share),
            "moves_per_round": float(np.mean(rounds["moves"][1:])), "rounds": len(ratios)}


def store_size(n_clients: int) -> dict:
    model = build_model("resnet18", (3, 32, 32), 10)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # momentum buffers exist
    state = {"loader": {"pass": 0, "offset": 0, "samples_seen": 0}, "control": torch.zeros(n),
             "optimizer": opt.state_dict()}
    one = state_bytes(state)
    with tempfile.TemporaryDirectory() as tmp:
        store = ClientStore(0, Path(tmp) / "rank0000")
        t0 = time.perf_counter()
        store.put(0, state)
        t1 = time.perf_counter()
        store.pop(0)
        t2 = time.perf_counter()
    return {"params": n, "client_bytes": one, "store_bytes": one * n_clients, "spill_s": t1 - t0, "read_s": t2 - t1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--period", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="train.batch_size: more local work per step")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        run_rounds(args, out)
        rr = round_ratios(out, args.ranks)
    st = store_size(args.clients)
    lines = [f"federated layer overhead: {args.clients} clients, {args.per_round} per round, {args.ranks} ranks, "
             f"{args.rounds} rounds of {args.period} local steps (digits, cnn, batch {args.batch}, SCAFFOLD), "
             f"{os.cpu_count()} cores",
             "| quantity | value | target |", "| --- | --- | --- |",
             f"| round time / ideal (median over rounds 1-{rr['rounds']}) | {rr['round_over_ideal']:.3f} | <= 1.10 |",
             f"| round time / ideal (worst round) | {rr['round_over_ideal_max']:.3f} | |",
             f"| of it: slowest rank's training / ideal (imbalance) | {rr['imbalance']:.3f} | |",
             f"| of it: exchange + server update / ideal | {rr['exchange']:.3f} | |",
             f"| of it: rank 0's swaps / ideal | {rr['swaps_rank0']:.3f} | |",
             f"| swap per client (median t_swap) | {rr['swap_ms']:.2f} ms | |",
             f"| swap / local training per client (median) | {rr['swap_over_train']:.3f} | |",
             f"| client states moved between ranks per round (mean) | {rr['moves_per_round']:.1f} | |",
             f"| store: one SCAFFOLD client of resnet18 ({st['params']} parameters) | "
             f"{st['client_bytes'] / 2**20:.1f} MiB | |",
             f"| store: {args.clients} such clients | {st['store_bytes'] / 2**30:.2f} GiB | |",
             f"| spill one such state to disk / read it back | {st['spill_s'] * 1e3:.0f} ms / "
             f"{st['read_s'] * 1e3:.0f} ms | |"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
