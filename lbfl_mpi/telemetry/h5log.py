"""One HDF5 file per rank: root attributes, a ``steps`` group (one row per step in equal-length 1-D
datasets) and an ``eval`` group. Every dataset carries a ``units`` attribute (:data:`UNITS`: "s",
"bytes", "samples", "samples/s", or "1" for a dimensionless value or an index).

Files are written in SWMR mode: rows are appended in blocks of ``telemetry.flush_every`` and flushed,
and HDF5 orders those writes so that a job killed at any moment leaves a readable file that lacks at
most the unflushed rows. Such a file must be opened with ``swmr=True`` (``open_rank_file`` does).
"""
from __future__ import annotations

import errno
import os
import platform
from pathlib import Path

import h5py
import numpy as np

from ..files import check_regular, temp_path
from .open_checked import open_rank_bounded
from .step_row import STEP_COLUMNS, STEP_UNITS, StepRow
from .validate import BadFile, check_rank_file

CHUNK_ROWS = 1024
DISK_MARGIN = 1 << 20  # HDF5 metadata (superblock, B-trees, SWMR flushes) on top of the rows
EVAL_COLUMNS: dict[str, str] = {"step": "i8", "test_loss": "f8", "test_acc": "f8", "t_eval": "f8",
                                "val_loss": "f8", "val_acc": "f8", "train_loss": "f8", "train_acc": "f8",
                                "sharpness": "f8"}
EVAL_UNITS: dict[str, str] = {"step": "1", "test_loss": "1", "test_acc": "1", "t_eval": "s", "val_loss": "1",
                              "val_acc": "1", "train_loss": "1", "train_acc": "1", "sharpness": "1"}
# the ``plan`` group's per-probe columns (plan/recommend.py rows)
PLAN_UNITS: dict[str, str] = {
    "batch": "samples", "held_out": "1", "mem_counted": "bytes", "mem_measured": "bytes", "mem_predicted": "bytes",
    "mem_err": "1",
    "mem_peak_cuda": "bytes", "t_compute": "s", "t_compute_predicted": "s", "t_compute_err": "1", "t_mov": "s",
    "samples_per_s": "samples/s", "global_batch": "samples", "t_sync": "s", "epoch_time": "s"}
# the federated layer (fl.clients > 0): one ``clients`` row per (round, client) trained on the rank, and
# on rank 0 one ``rounds`` row per round; ``step`` is the round's last 0-based step (resume truncates by it)
CLIENT_COLUMNS: dict[str, str] = {"step": "i8", "round": "i8", "client": "i8", "samples": "i8", "local_steps": "i4",
                                  "loss_first": "f8", "loss_last": "f8", "delta_norm": "f8", "t_train": "f8",
                                  "t_swap": "f8", "bytes_moved": "i8", "uplink_bytes": "i8"}
CLIENT_UNITS: dict[str, str] = {"step": "1", "round": "1", "client": "1", "samples": "samples", "local_steps": "1",
                                "loss_first": "1", "loss_last": "1", "delta_norm": "1", "t_train": "s", "t_swap": "s",
                                "bytes_moved": "bytes", "uplink_bytes": "bytes"}
ROUND_COLUMNS: dict[str, str] = {"step": "i8", "round": "i8", "clients": "i4", "samples": "i8", "t_round": "f8",
                                 "t_exchange": "f8", "update_norm": "f8", "bytes_sent": "i8", "moves": "i4",
                                 "t_link": "f8"}
ROUND_UNITS: dict[str, str] = {"step": "1", "round": "1", "clients": "1", "samples": "samples", "t_round": "s",
                               "t_exchange": "s", "update_norm": "1", "bytes_sent": "bytes", "moves": "1",
                               "t_link": "s"}
FL_GROUPS: dict[str, dict[str, str]] = {"clients": CLIENT_COLUMNS, "rounds": ROUND_COLUMNS}
# group -> column -> the ``units`` attribute of its dataset
UNITS: dict[str, dict[str, str]] = {"steps": STEP_UNITS, "eval": EVAL_UNITS, "plan": PLAN_UNITS,
                                    "clients": CLIENT_UNITS, "rounds": ROUND_UNITS}


def open_rank_file(path: str | os.PathLike) -> h5py.File:
    """Open a rank file read-only, also when its writer was killed (SWMR read). A FIFO, device or
    directory at the name is NotRegularFile (an OSError), never handed to HDF5."""
    check_regular(path)
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError:
        return h5py.File(path, "r")


def read_group(f: h5py.File, group: str, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """All columns of a group, cut to the shortest column (a killed writer may leave one row ragged).
    With ``max_bytes``, a column whose rows to be read would take more (a damaged or crafted header
    claiming 10^12 rows in a small file) raises BadFile instead of being allocated."""
    if group not in f:
        return {}
    g = f[group]
    if f.swmr_mode:
        for d in g.values():
            d.refresh()
    if any(not isinstance(d, h5py.Dataset) or d.ndim != 1 for d in g.values()):
        raise BadFile(f"group {group!r} holds something other than 1-D columns")
    n = min((d.shape[0] for d in g.values()), default=0)
    for k, d in g.items():
        if max_bytes is not None and n * d.dtype.itemsize > max_bytes:
            raise BadFile(f"{group}/{k} claims {n} rows ({n * d.dtype.itemsize} bytes), more than the "
                          f"file's {max_bytes} bytes (with slack) can hold")
    return {k: d[:n] for k, d in g.items()}


def write_plan(f: h5py.File, plan: dict) -> None:
    """Group ``plan``: the ``lbfl plan`` result of this rank. Scalars become attributes (None -> -1 for
    batch sizes, NaN otherwise), the per-batch table becomes one dataset per column, and the whole
    result is kept as JSON in the attribute ``json``."""
    import json

    g = f.create_group("plan")
    g.attrs["json"] = json.dumps(plan)
    for k, v in plan.items():
        if isinstance(v, bool) or isinstance(v, (int, float, str)):
            g.attrs[k] = v
        elif v is None:
            g.attrs[k] = -1 if k.endswith("batch") else float("nan")
    for col in (plan.get("rows") or [{}])[0]:
        vals = [r[col] for r in plan["rows"]]
        d = g.create_dataset(col, data=np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
                             if col not in ("batch", "held_out") else np.asarray(vals, dtype=np.int64))
        d.attrs["units"] = PLAN_UNITS.get(col, "1")


def versions() -> str:
    import torch

    try:
        import mpi4py
        mpi = mpi4py.__version__
    except ImportError:
        mpi = "absent"
    return (f"python {platform.python_version()}, torch {torch.__version__}, mpi4py {mpi}, "
            f"h5py {h5py.__version__}, numpy {np.__version__}")


CPUINFO = Path("/proc/cpuinfo")


def cpu_info() -> str:
    """The host CPU as float results depend on it: the model name (``/proc/cpuinfo``, else
    ``platform.processor()`` or the machine type), torch's CPU kernel capability (the vector ISA its
    kernels dispatch to, e.g. AVX512) and torch's intra-op thread count. Where it differs, two runs
    of one config and seed may differ in their float results."""
    import torch

    model = ""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                model = value.strip()
                break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown"
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = "unknown"
    return f"{model}, {isa}, {torch.get_num_threads()} threads"


class RankLog:
    """Buffered, append-only writer for one rank's telemetry."""

    def __init__(self, path: str | os.PathLike, *, rank: int, world_size: int, config_json: str,
                 device: str, flush_every: int, resume_step: int | None = None,
                 step_columns: dict[str, str] | None = None, extra_attrs: dict | None = None,
                 plan: dict | None = None, groups: dict[str, dict[str, str]] | None = None):
        self.path = Path(path)
        self.flush_every = flush_every
        self.columns = {"steps": dict(step_columns or STEP_COLUMNS), "eval": dict(EVAL_COLUMNS),
                        **{g: dict(c) for g, c in (groups or {}).items()}}
        self.pending: dict[str, list[dict]] = {g: [] for g in self.columns}
        kept = self._rows_before(resume_step) if resume_step is not None else None
        kept_rows = max((len(v) for g in (kept or {}).values() for v in g.values()), default=0)
        self._room(kept_rows)
        # a fresh, exclusively created name: never a link planted at a fixed temporary name
        tmp = temp_path(self.path)
        f = h5py.File(tmp, "w", libver="latest")
        f.attrs.update({"rank": rank, "world_size": world_size, "config_json": config_json,
                        "hostname": platform.node(), "device": device, "versions": versions(),
                        "cpu": cpu_info(), **(extra_attrs or {})})
        for group, cols in self.columns.items():
            g = f.create_group(group)
            # rows kept from a file written before a column existed get its missing value there
            n = len(kept[group].get("step", ())) if kept is not None else 0
            for name, dtype in cols.items():
                data = kept[group].get(name) if kept is not None else None
                if data is None and n:
                    data = np.full(n, np.nan if np.dtype(dtype).kind == "f" else 0, dtype=dtype)
                d = g.create_dataset(name, shape=(n,), maxshape=(None,), dtype=dtype, chunks=(CHUNK_ROWS,))
                d.attrs["units"] = UNITS[group].get(name, "1")
                if n:
                    d[:] = data[:n]
        if plan is not None:
            write_plan(f, plan)
        # the file appears under its name complete with its header (and a resumed run's kept rows:
        # a crashed file cannot be reopened for writing, so they move to a fresh one), already open
        # here as a SWMR writer: a reader that opens it the moment it appears (lbfl analyze on a live
        # run) cannot hold a lock that a reopen here would then fail on (EAGAIN, the job ended)
        f.swmr_mode = True  # flushes the header
        os.replace(tmp, self.path)
        self.f = f

    def _rows_before(self, step: int) -> dict[str, dict[str, np.ndarray]]:
        if not self.path.exists():
            return {g: {} for g in self.columns}
        reason = check_rank_file(self.path)
        if reason is not None:  # the run directory check reports this first; never open a damaged file
            raise ValueError(f"{self.path}: {reason}")
        limit = 2 * os.path.getsize(self.path) + 2**26
        with open_rank_bounded(self.path) as old:
            out = {}
            for group in self.columns:
                cols = read_group(old, group, max_bytes=limit) if group in old else {}
                keep = int(np.searchsorted(cols["step"], step)) if "step" in cols else 0
                out[group] = {k: v[:keep] for k, v in cols.items()}
        return out

    def log_step(self, **row) -> None:
        missing = set(self.columns["steps"]) - set(row)
        if missing:
            raise KeyError(f"step row lacks columns {sorted(missing)}")
        self.pending["steps"].append(row)
        if len(self.pending["steps"]) >= self.flush_every:
            self.flush()

    def log_row(self, row: StepRow) -> None:
        """Append one step's row (train/step.py builds it; every column is a field of it)."""
        self.pending["steps"].append(row)
        if len(self.pending["steps"]) >= self.flush_every:
            self.flush()

    def log_eval(self, step: int, test_loss: float, test_acc: float, t_eval: float = float("nan"),
                 **more: float) -> None:
        """One evaluation after 0-based step ``step``; ``t_eval``: its seconds on this rank; ``more``:
        other columns of EVAL_COLUMNS (val_*, train_*, sharpness), NaN where not measured (the test
        set before the last step when a validation split exists)."""
        unknown = set(more) - set(EVAL_COLUMNS)
        if unknown:
            raise KeyError(f"eval row has unknown columns {sorted(unknown)}")
        row = dict.fromkeys(EVAL_COLUMNS, float("nan"))
        row.update(step=step, test_loss=test_loss, test_acc=test_acc, t_eval=t_eval, **more)
        self.pending["eval"].append(row)

    def log_group(self, group: str, row: dict) -> None:
        """One row of an extra group (``groups`` at construction: the federated layer's ``clients`` and
        ``rounds``); written with the next flush."""
        self.pending[group].append(row)

    def _room(self, rows: int) -> None:
        """Raise ENOSPC before HDF5 writes ``rows`` rows to a disk without room for them: libhdf5 does not
        recover from a failed write (every object it then releases reports the error again, and a later
        flush can crash the process), so a full disk must be found before the write. The estimate:
        the rows, a fresh chunk per column, and DISK_MARGIN for metadata. Quotas are not seen here."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        cols = sum(len(c) for c in self.columns.values())
        need = rows * 8 * cols + cols * CHUNK_ROWS * 8 + DISK_MARGIN
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free, writing the rank file "
                                        f"needs about {need})", str(self.path))

    def flush(self) -> None:
        self._room(sum(len(rows) for rows in self.pending.values()))
        for group, rows in self.pending.items():
            if not rows:
                continue
            g = self.f[group]
            n0 = g["step"].shape[0]
            for name in self.columns[group]:
                d = g[name]
                d.resize((n0 + len(rows),))
                d[n0:] = np.asarray([r[name] for r in rows], dtype=d.dtype)
            rows.clear()
        self.f.flush()

    def abandon(self) -> None:
        """A write failed (a full disk, a quota): leave the file as it is. Every further HDF5 call on it,
        a close included, fails again and reports it, once per object it releases."""
        self.abandoned = True

    def close(self) -> None:
        if getattr(self, "abandoned", False):
            return
        if self.f.id.valid:
            self.flush()
            self.f.close()
