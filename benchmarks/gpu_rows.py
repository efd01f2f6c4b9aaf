"""Raw result rows of the GPU checks: one strict-JSON object a line, appended to one file beside the report.

Every benchmark that a GPU check calls takes ``--json FILE`` and appends its rows through
:func:`append_row`, each tagged with the part that wrote it, so a run killed at its limit keeps
every row written before the kill.
"""
from __future__ import annotations

import os
import time

from lbfl_mpi.files import dumps_strict


def append_row(path, part: str, row: dict) -> None:
    """Append ``{"part": part, "time": ..., **row}`` as one line (non-finite numbers become null)."""
    if not path:
        return
    line = dumps_strict({"part": part, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
