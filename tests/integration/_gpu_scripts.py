"""Helpers shared by the tests of the GPU scripts (benchmarks/gpu_check.sh, benchmarks/gpu_fidelity.sh)."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT


def script_limits(script: Path) -> dict[str, int]:
    """The script's LIMIT table as written (the reference for the sum it prints)."""
    line = next(ln for ln in script.read_text().splitlines() if ln.startswith("declare -A LIMIT="))
    return {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", line)}


def run_dry(script: Path, env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """``GPU_CHECK_DRY=1 bash SCRIPT`` with ``env``: (the finished process, its wall seconds)."""
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(script)], env={**env, "GPU_CHECK_DRY": "1"}, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    return p, time.monotonic() - t0
