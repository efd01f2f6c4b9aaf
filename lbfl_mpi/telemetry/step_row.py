"""One training step's row of the rank file: the ``steps`` group's column schema.

:class:`StepRow` *is* the schema. Each field is one HDF5 column, in this order, with its dtype in the
field's metadata, and its unit (``STEP_UNITS``, written as each dataset's ``units`` attribute);
``STEP_COLUMNS`` (h5log.py) is derived from it. The step's stages (train/step.py)
fill one row each; a field a stage does not reach keeps its default (NaN for floats that have no value
that step, 0 otherwise). The meaning of every column is in docs/run-dir.md."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


def _col(dtype: str, default=0, unit: str = "1"):
    """A column: its HDF5 dtype and its unit (the dataset's ``units`` attribute; "1": dimensionless)."""
    return field(default=default, metadata={"dtype": dtype, "unit": unit})


NAN = math.nan


@dataclass(slots=True)
class StepRow:
    step: int = _col("i8")
    epoch: float = _col("f8", 0.0)
    batch_size: int = _col("i4", unit="samples")
    lr: float = _col("f8", 0.0)
    loss: float = _col("f8", NAN)
    t_data: float = _col("f8", 0.0, unit="s")
    t_compute: float = _col("f8", 0.0, unit="s")
    t_compress: float = _col("f8", 0.0, unit="s")
    t_sync: float = _col("f8", 0.0, unit="s")
    t_link: float = _col("f8", 0.0, unit="s")
    t_step: float = _col("f8", 0.0, unit="s")
    grad_norm_sq: float = _col("f8", NAN)
    grad_change: float = _col("f8", NAN)
    scale_factor: float = _col("f8", 0.0)
    synced: int = _col("i1")
    bytes_sent: int = _col("i8", unit="bytes")
    density_actual: float = _col("f8", NAN)
    residual_norm_sq: float = _col("f8", 0.0)
    t_straggle: float = _col("f8", 0.0, unit="s")
    throughput: float = _col("f8", 0.0, unit="samples/s")
    phase: int = _col("i1")
    noise_scale: float = _col("f8", NAN, unit="samples")
    t_teacher: float = _col("f8", 0.0, unit="s")
    teacher_nll: float = _col("f8", NAN)
    teacher_cos: float = _col("f8", NAN)
    teacher_noise_sq: float = _col("f8", NAN)
    nonfinite_skip: int = _col("i1")
    global_batch: int = _col("i8", unit="samples")
    micro_batches: int = _col("i4")
    goodput: float = _col("f8", NAN, unit="samples/s")

    def __getitem__(self, name: str):
        """``row[name]``: the writer reads rows and dicts alike."""
        return getattr(self, name)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in COLUMN_NAMES}


COLUMN_NAMES: tuple[str, ...] = tuple(f.name for f in fields(StepRow))
STEP_COLUMNS: dict[str, str] = {f.name: f.metadata["dtype"] for f in fields(StepRow)}
STEP_UNITS: dict[str, str] = {f.name: f.metadata["unit"] for f in fields(StepRow)}
