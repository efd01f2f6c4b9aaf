"""Fake run directories for analyze tests: a resolved config.toml, summary.json and one small HDF5
file per rank with the layout of telemetry/h5log.py, written directly (no training)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from lbfl_mpi.config import Config, dump_toml

STEPS = 4


def fake_run(out: Path, *, final: float, best: float | None = None, seed: int = 0, name: str = "",
             world_size: int = 2, train: dict | None = None, summary: bool = True, wall: float = 10.0,
             bytes_per_step: int = 400, dense_bytes: int = 1000, **sections) -> Path:
    """A finished run of ``world_size`` ranks whose eval log ends at ``final`` (best ``best``).
    ``train`` and ``sections`` (e.g. ``scaling={"method": "step"}``) override the default Config."""
    cfg = Config().to_dict()
    cfg["run"].update(out_dir=str(out), name=name, seed=seed, world_size=world_size)
    cfg["train"].update({"steps": STEPS, **(train or {})})
    for sec, values in sections.items():
        cfg[sec].update(values)
    out.mkdir(parents=True)
    (out / "config.toml").write_text(dump_toml(cfg))
    b = cfg["train"]["batch_size"]
    best = final if best is None else best
    acc = np.array([best - 0.1, best, final])
    for r in range(world_size):
        with h5py.File(out / f"rank{r:04d}.h5", "w") as f:
            f.attrs.update(rank=r, world_size=world_size, config_json=json.dumps(cfg), dense_bytes=dense_bytes)
            st = f.create_group("steps")
            for col, val in (("step", np.arange(STEPS)), ("batch_size", np.full(STEPS, b)),
                             ("t_data", np.full(STEPS, 1e-3)), ("t_compute", np.full(STEPS, 2e-3)),
                             ("t_compress", np.zeros(STEPS)), ("t_sync", np.full(STEPS, 1e-3)),
                             ("t_step", np.full(STEPS, 4e-3)), ("synced", np.ones(STEPS, dtype=np.int8)),
                             ("bytes_sent", np.full(STEPS, bytes_per_step)), ("loss", np.linspace(2, 1, STEPS)),
                             ("grad_norm_sq", np.linspace(4, 1, STEPS)), ("grad_change", np.full(STEPS, 0.1)),
                             ("scale_factor", np.ones(STEPS))):
                st.create_dataset(col, data=val)
            ev = f.create_group("eval")
            ev.create_dataset("step", data=np.array([0, 2, 3]))
            ev.create_dataset("test_acc", data=acc)
            ev.create_dataset("test_loss", data=1 - acc)
    if summary:
        s = {"name": name or out.name, "outcome": "completed", "final_test_acc": final, "best_test_acc": best,
             "steps": STEPS, "world_size": world_size, "global_batch": b * world_size, "wall_time_s": wall,
             "samples_per_s": STEPS * b * world_size / wall}
        (out / "summary.json").write_text(json.dumps(s))
    return out
