"""``lbfl analyze RUN --trace FILE.json``: a run's timeline in the Chrome trace event format, which
ui.perfetto.dev and chrome://tracing open (the idea of Horovod's timeline).

One process per rank ("rank N"). Its thread "steps" has, for every step, complete ("X") events in
the order the step runs them (train/step.py): ``data`` (t_data), ``compute`` (t_compute),
``straggle`` (t_straggle, emulated slowness), ``compress`` (t_compress), ``exchange`` (t_sync, which
includes waiting for slower ranks inside the collective) and ``other`` (the rest of t_step:
bookkeeping), each event's args naming the step; an ``eval`` event (t_eval) follows every evaluated
step. With the federated layer, a second thread "clients" has one event per client trained in a
round (t_train), laid from the start of the round's first step.

Times come from the logged durations, not from clocks: every track starts at 0, and the events of
a rank add up to exactly its logged sum of t_step plus t_eval. Ranks are aligned at the start
only; a wait shows as a longer ``exchange`` on the rank that waited.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..files import write_json_atomic
from .load import RunData

PHASES = (("data", "t_data"), ("compute", "t_compute"), ("straggle", "t_straggle"), ("compress", "t_compress"),
          ("exchange", "t_sync"))


def _us(seconds) -> float:
    s = float(seconds)
    return s * 1e6 if math.isfinite(s) and s > 0 else 0.0


def rank_events(rank: int, steps: dict, ev: dict, clients: dict) -> list[dict]:
    """The trace events of one rank (see the module docstring)."""
    out = [{"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}},
           {"name": "thread_name", "ph": "M", "pid": rank, "tid": 0, "args": {"name": "steps"}}]
    evals = {int(s): t for s, t in zip(ev.get("step", []), ev.get("t_eval", []))}
    starts: dict[int, float] = {}
    t = 0.0
    for i, step in enumerate(steps.get("step", [])):
        step = int(step)
        starts.setdefault(step, t)
        used = 0.0
        for name, col in PHASES:
            d = _us(steps[col][i]) if col in steps else 0.0
            if d > 0:
                out.append({"name": name, "ph": "X", "pid": rank, "tid": 0, "ts": t + used, "dur": d,
                            "args": {"step": step}})
                used += d
        rest = _us(steps["t_step"][i]) - used
        if rest > 0:
            out.append({"name": "other", "ph": "X", "pid": rank, "tid": 0, "ts": t + used, "dur": rest,
                        "args": {"step": step}})
            used += rest
        t += used
        if step in evals and _us(evals[step]) > 0:
            out.append({"name": "eval", "ph": "X", "pid": rank, "tid": 0, "ts": t, "dur": _us(evals[step]),
                        "args": {"step": step}})
            t += _us(evals[step])
    if clients.get("round") is not None and len(clients["round"]):
        out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": 1, "args": {"name": "clients"}})
        period = _period(steps, clients)
        cursor: dict[int, float] = {}
        for rnd, cid, dur in zip(clients["round"], clients["client"], clients["t_train"]):
            rnd = int(rnd)
            ts = cursor.get(rnd, starts.get(rnd * period, 0.0))
            out.append({"name": f"client {int(cid)}", "ph": "X", "pid": rank, "tid": 1, "ts": ts, "dur": _us(dur),
                        "args": {"round": rnd, "client": int(cid)}})
            cursor[rnd] = ts + _us(dur)
    return out


def _period(steps: dict, clients: dict) -> int:
    """Steps per round: a round's rows end at its ``step`` column (the round's last step)."""
    rounds, last = np.asarray(clients["round"]), np.asarray(clients["step"])
    return int((last[0] + 1) // (rounds[0] + 1)) if len(rounds) else 1


def trace(run: RunData) -> dict:
    events = []
    for r in run.ranks:
        events += rank_events(r.rank, r.steps, r.eval, r.clients)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"run": str(run.path), "name": run.name, "ranks": len(run.ranks)}}


def write_trace(run: RunData, path: str | Path) -> int:
    """Write the trace; returns its number of events."""
    data = trace(run)
    write_json_atomic(Path(path), data)
    return len(data["traceEvents"])
