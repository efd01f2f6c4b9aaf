"""Cost of the MPI watchdog (``dist.timeout_s`` on the mpi backend; lbfl_mpi/comm/watchdog.py).

Run:  mpiexec -n 2 --oversubscribe python benchmarks/bench_watchdog.py [--model mlp --model cnn]
          [--batch 32] [--steps 60] [--calls 2000] [--markdown FILE]

Every blocking MPI call of a rank is "watched": two attribute stores around the call (the slot a
daemon thread polls once per ``poll_s``, 1 s at the default timeout). Side by side in one run:
(1) the bookkeeping alone, one process, no MPI: a watched no-op method against a plain one, ns per
    call, minimum (and median) over 300 interleaved samples of 2000 calls;
(2) a small allreduce (8 float32) through the MPI plane, watched against the same method unwrapped:
    (2a) on MPI_COMM_SELF, the MPI call's own cost without a peer to wait for, minimum ns per call over
    300 interleaved samples of 2000 calls; (2b) over the ranks (unwatched twice, as in (3)),
    ``--calls`` calls per sample back to back after a barrier, interleaved in rounds, median us per
    call of the slowest rank (on a shared machine dominated by when the peer gets a core);
(3) the whole lbfl step (``lbfl_mpi.train.run_step`` + HDF5 row, _lbfl_step.py's LbflStep; BSP, the
    default stop agreement) on a Comm whose watchdog is armed (thread running), "on", against two over
    duplicates of MPI_COMM_WORLD whose watched methods are replaced by the unwrapped originals and
    whose watchdogs are disarmed, "off" and "off2", interleaved in rounds; median of the slowest rank.
    off2/off compares two identical variants: the noise floor any on/off ratio must be read against.
    With it, the watched calls per step (counted) times (1), as a share of the fastest "on" step (the
    slowest rank's; a step that was not preempted, so the share is an upper bound): the cost the step
    pays, far below the whole-step noise of a shared machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import SelfTimed, interleave, slowest_median
from _lbfl_step import LbflStep, lbfl_overrides

from lbfl_mpi.comm.mpi_plane import MPIPlane
from lbfl_mpi.comm.watchdog import Watchdog, watched
from lbfl_mpi.comm.world import Comm


def unwatch(comm: Comm) -> Comm:
    """``comm`` with every watched method of it and of its MPI plane replaced by the unwrapped original,
    and its watchdog disarmed: the step path as it was without the watchdog."""
    for obj, cls in ((comm, Comm), (comm.plane, MPIPlane)):
        for name, fn in vars(cls).items():
            inner = getattr(fn, "__wrapped__", None) if isinstance(fn, types.FunctionType) else None
            if inner is not None:  # a @watched method (staticmethods have __wrapped__ too)
                setattr(obj, name, types.MethodType(inner, obj))
    comm.watch.disarm()
    return comm


class _Counting(Watchdog):
    """Counts the watched calls (entries into the slot)."""

    def __init__(self):
        self.calls, self._slot = 0, None
        super().__init__(lambda code: None)

    @property
    def slot(self):
        return self._slot

    @slot.setter
    def slot(self, value):
        self.calls += value is not None
        self._slot = value


class _NoOp:
    def __init__(self):
        self.watch = Watchdog(lambda code: None)

    def plain(self):
        return None

    @watched("bench")
    def guarded(self):
        return None


def bookkeeping_ns(n: int = 2_000, repeats: int = 300) -> dict[str, tuple[float, float]]:
    """``{"plain" | "guarded": (min, median) ns per call}`` of a no-op method over ``repeats`` samples of
    ``n`` calls, interleaved (the minimum is the cost when the process is not preempted)."""
    obj, out = _NoOp(), {"plain": [], "guarded": []}
    for _ in range(repeats):
        for name in out:
            fn = getattr(obj, name)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name].append((time.perf_counter() - t0) / n * 1e9)
    return {k: (min(v), statistics.median(v)) for k, v in out.items()}


def allreduce_us(comms: dict[str, Comm], calls: int, rounds: int = 20) -> dict[str, float]:
    """Median us per small allreduce of each comm's plane, slowest rank."""
    buf = torch.zeros(8)

    def batch(plane):
        def run():
            t0 = time.perf_counter()
            for _ in range(calls):
                plane.allreduce_(buf)
            return SelfTimed((time.perf_counter() - t0) / calls)
        return run

    first = comms["on"]
    times = interleave({k: batch(c.plane) for k, c in comms.items()}, rounds, 2, 1, None, first)
    return {k: slowest_median(t, first) * 1e6 for k, t in times.items()}


def self_allreduce_ns(n: int = 2_000, repeats: int = 300) -> dict[str, float]:
    """Minimum ns per allreduce of 8 float32 on MPI_COMM_SELF (a real MPI call, no peer to wait for),
    through a watched plane and an unwatched one, over ``repeats`` interleaved samples of ``n`` calls."""
    from mpi4py import MPI

    planes = {"on": Comm(comm=MPI.COMM_SELF), "off": unwatch(Comm(comm=MPI.COMM_SELF))}
    buf, out = torch.zeros(8), {k: [] for k in planes}
    for _ in range(repeats):
        for k, c in planes.items():
            fn = c.plane.allreduce_
            t0 = time.perf_counter()
            for _ in range(n):
                fn(buf)
            out[k].append((time.perf_counter() - t0) / n * 1e9)
    return {k: min(v) for k, v in out.items()}


def calls_per_step(step: LbflStep, steps: int = 5) -> float:
    comm = step.worker.comm
    real, counter = comm.watch, _Counting()
    comm.watch = comm.plane.watch = counter
    for _ in range(steps):
        step()
    comm.watch = comm.plane.watch = real
    return counter.calls / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="mlp, cnn, ... (repeatable; default mlp, cnn)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--markdown", help="also write the report to this file")
    args = ap.parse_args()
    from mpi4py import MPI

    # "off" and "off2" are the same (unwatched): their ratio is this machine's noise floor
    comms = {"off": Comm(comm=MPI.COMM_WORLD.Dup()), "on": Comm(), "off2": Comm(comm=MPI.COMM_WORLD.Dup())}
    for name, c in comms.items():
        c.pick_device("cpu")
        c.start_backend("mpi", 300.0)
        if name != "on":
            unwatch(c)
    on = comms["on"]
    ns = bookkeeping_ns()
    cost_ns = ns["guarded"][0] - ns["plain"][0]
    us = allreduce_us(comms, args.calls)
    self_ns = self_allreduce_ns()
    lines = [f"ranks {on.world_size}; batch {args.batch} per rank; synthetic CIFAR-shaped data; CPU; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads per rank; MPI thread level "
             f"{'multiple' if MPI.Query_thread() == MPI.THREAD_MULTIPLE else MPI.Query_thread()}; "
             f"{args.steps} timed steps per variant", "",
             f"(1) bookkeeping alone, min (median) ns per call: plain no-op method {ns['plain'][0]:.0f} "
             f"({ns['plain'][1]:.0f}), watched {ns['guarded'][0]:.0f} ({ns['guarded'][1]:.0f}): "
             f"{cost_ns:.0f} ns per watched call",
             f"(2a) allreduce of 8 float32 on MPI_COMM_SELF, min ns per call: unwatched {self_ns['off']:.0f}, "
             f"watched {self_ns['on']:.0f} (+{self_ns['on'] - self_ns['off']:.0f} ns, on/off "
             f"{self_ns['on'] / self_ns['off']:.3f})",
             f"(2b) allreduce of 8 float32 over the {on.world_size} ranks, median us per call: unwatched "
             f"{us['off']:.2f}, watched {us['on']:.2f}, unwatched again {us['off2']:.2f} (on/off "
             f"{us['on'] / us['off']:.3f}, off2/off {us['off2'] / us['off']:.3f}; {args.calls} calls per sample, "
             f"slowest rank)", "",
             "| model | off ms | on ms | off2 ms | on/off | off2/off (noise) | fastest on step ms | "
             "watched calls per step | (1) x calls, % of the fastest step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in args.model or ["mlp", "cnn"]:
        with tempfile.TemporaryDirectory() as tmp:
            base = lbfl_overrides(args, model)
            steps = {}
            for name, c in comms.items():
                (Path(tmp) / name).mkdir()
                steps[name] = LbflStep(base, c, "cpu", str(Path(tmp) / name))
                if name != "on":
                    unwatch(c)  # build_worker's start_backend armed it again
            assert on.watch.armed and not comms["off"].watch.armed and not comms["off2"].watch.armed
            n_calls = calls_per_step(steps["on"])
            times = interleave(steps, args.steps, 3, 5, steps["on"].device, on)
            t = {k: slowest_median(v, on) for k, v in times.items()}
            fastest = max(on.allgather_obj(min(times["on"])))  # the slowest rank's fastest step: unpreempted
            share = 100 * n_calls * cost_ns * 1e-9 / fastest
            lines.append(f"| {model} | {t['off'] * 1e3:.3f} | {t['on'] * 1e3:.3f} | {t['off2'] * 1e3:.3f} | "
                         f"{t['on'] / t['off']:.3f} | {t['off2'] / t['off']:.3f} | {fastest * 1e3:.3f} | {n_calls:g} | "
                         f"{share:.4f} % |")
            for st in steps.values():
                st.close()
    on.watch.disarm()
    if on.rank == 0:
        text = "\n".join(lines)
        print(text)
        if args.markdown:
            Path(args.markdown).write_text("# MPI watchdog cost\n\n" + text + "\n")


if __name__ == "__main__":
    main()
