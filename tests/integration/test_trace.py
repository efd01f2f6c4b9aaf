"""``lbfl analyze RUN --trace FILE.json``: the file loads as JSON in the Chrome trace event format, and
its events add up to the logged times (reference: the rank files' own columns)."""
from __future__ import annotations

import json

import numpy as np
from torch.testing import assert_close

from lbfl_mpi.telemetry import open_rank_file, read_group

from ..conftest import run_lbfl, tiny_run_args


def test_a_trace_of_a_two_rank_federated_run_sums_to_the_logged_times(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "sync.mode='fedavg'", "sync.period=3", "fl.clients=4", "fl.clients_per_round=3"),
             n=2)
    path = tmp_path / "trace.json"
    p = run_lbfl(["analyze", str(out), "--trace", str(path)], check=True)
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    assert f"wrote {path}: {len(events)} trace events of 2 ranks" in p.stderr
    for rank in range(2):
        with open_rank_file(out / f"rank{rank:04d}.h5") as f:
            steps, ev, clients = read_group(f, "steps"), read_group(f, "eval"), read_group(f, "clients")
        mine = [e for e in events if e["pid"] == rank and e["ph"] == "X"]
        phases = [e for e in mine if e["tid"] == 0 and e["name"] != "eval"]
        assert_close(sum(e["dur"] for e in phases), float(np.sum(steps["t_step"])) * 1e6, rtol=1e-9, atol=1e-3)
        assert_close(sum(e["dur"] for e in mine if e["name"] == "exchange"), float(np.sum(steps["t_sync"])) * 1e6,
                     rtol=1e-9, atol=1e-3)
        assert_close(sum(e["dur"] for e in mine if e["name"] == "eval"), float(np.sum(ev["t_eval"])) * 1e6,
                     rtol=1e-9, atol=1e-3)
        track = sorted((e for e in mine if e["tid"] == 0), key=lambda e: e["ts"])
        assert all(a["ts"] + a["dur"] <= b["ts"] + 1e-6 for a, b in zip(track, track[1:]))  # one phase at a time
        assert {e["args"]["step"] for e in phases} == set(int(s) for s in steps["step"])
        client_events = [e for e in mine if e["tid"] == 1]
        assert [e["args"]["client"] for e in client_events] == [int(c) for c in clients["client"]]
        assert_close([e["dur"] for e in client_events], [float(t) * 1e6 for t in clients["t_train"]])
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert {"rank 0", "rank 1", "steps", "clients"} <= names
    run_lbfl(["analyze", str(out), "--plots", str(tmp_path / "plots")])
    assert (tmp_path / "plots" / "federated.png").stat().st_size > 10_000


def test_trace_needs_exactly_one_run(tmp_path):
    for name in ("a", "b"):
        run_lbfl(tiny_run_args(tmp_path / name, "train.steps=2"))
    p = run_lbfl(["analyze", str(tmp_path / "a"), str(tmp_path / "b"), "--trace", str(tmp_path / "t.json")],
                 check=False)
    assert p.returncode == 2 and "needs exactly one run directory, got 2" in p.stderr
    assert not (tmp_path / "t.json").exists()
