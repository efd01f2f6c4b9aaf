"""Cost of the per-step stop agreement (preemption signals, non-finite guard; lbfl_mpi/run/stopping.py).

Run:  mpiexec -n 2 --oversubscribe python benchmarks/bench_agree.py [--model cnn --model resnet18]
          [--steps 20] [--calls 2000] [--markdown FILE]

Under BSP the ranks agree once per step, right after the gradient exchange, with one MPI allgather
of five int64 per rank. Two measurements, side by side in one run:
(1) the agreement alone: ``StopAgreement.agree()`` called ``--calls`` times back to back after a
    barrier (ranks in step, as they are after the gradient exchange); median microseconds per call;
(2) the whole lbfl step (``lbfl_mpi.train.run_step`` + HDF5 row, _lbfl_step.py's LbflStep) with the
    default ``train.nonfinite='stop'`` and ``run.preempt_signals`` (agreement every step) against
    ``train.nonfinite='ignore'``, ``run.preempt_signals=[]`` (no agreement), interleaved in rounds;
    median of the slowest rank. Ratio with / without, and (1) as a share of the step.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import interleave, slowest_median, timed
from _lbfl_step import LbflStep, lbfl_overrides

from lbfl_mpi.comm.world import Comm
from lbfl_mpi.run.stopping import StopAgreement


def agreement_us(comm: Comm, calls: int) -> float:
    agree = StopAgreement(comm, None)
    for _ in range(50):
        agree.agree()
    times = [timed(agree.agree, None, comm) for _ in range(calls)]  # each call after a barrier
    return slowest_median(times, comm) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="cnn, resnet18, ... (repeatable; default cnn, resnet18)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--markdown", help="also write the report to this file")
    args = ap.parse_args()
    comm = Comm()
    lines = [f"ranks {comm.world_size}; batch {args.batch} per rank; synthetic CIFAR-shaped data; CPU", ""]
    us = agreement_us(comm, args.calls)
    lines += [f"agreement alone: median {us:.1f} us per call over {args.calls} calls (slowest rank)", "",
              "| model | no agreement ms | agreement ms | with/without | agreement alone, % of step |",
              "| --- | --- | --- | --- | --- |"]
    for model in args.model or ["cnn", "resnet18"]:
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            base = lbfl_overrides(args, model)
            off = LbflStep(base + ["train.nonfinite=ignore", "run.preempt_signals=[]"], comm, "cpu", d1)
            on = LbflStep(base, comm, "cpu", d2)
            assert on.agreeing and not off.agreeing
            times = interleave({"off": off, "on": on}, args.steps, 3, 5, off.device, comm)
            t_off, t_on = slowest_median(times["off"], comm), slowest_median(times["on"], comm)
            lines.append(f"| {model} | {t_off * 1e3:.2f} | {t_on * 1e3:.2f} | {t_on / t_off:.3f} | "
                         f"{100 * us * 1e-6 / t_on:.3f} % |")
            off.close()
            on.close()
    if comm.rank == 0:
        text = "\n".join(lines)
        print(text)
        if args.markdown:
            Path(args.markdown).write_text("# Stop agreement cost\n\n" + text + "\n")


if __name__ == "__main__":
    main()
