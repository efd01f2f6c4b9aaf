"""Environment variables lbfl reads, checked like config values: once, before MPI starts, each bad value
a :class:`~lbfl_mpi.config.fields.ConfigError` naming the variable (one line, exit code 2), never a
traceback later or a value silently taken as something else.

| variable | allowed | read by |
| --- | --- | --- |
| ``LBFL_ALLREDUCE_CHUNK_MB`` | 0 (one message), or MiB per slice in [1/1024, 1048576] | comm/mpi_plane.py |
| ``LBFL_CUDA_AWARE`` | 1, 0, true, false, yes, no (any case) | comm/world.py |
| ``LBFL_MPI`` | auto (or empty), 1 (always start MPI), 0 (never; refused under > 1 rank) | comm/single.py |
| ``MASTER_PORT`` | an integer in [0, 65535] (0 or empty: any free port) | comm/torch_plane.py |
| ``MASTER_ADDR`` | a host name or address: no spaces, no control characters | comm/torch_plane.py |
| ``OMP_NUM_THREADS`` | a positive integer (OpenMP's list form "4,2" is left to OpenMP) | comm/world.py |
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

from .fields import ConfigError, shown

CHUNK_MB_MIN, CHUNK_MB_MAX = 2.0**-10, 2.0**20  # 1 KiB .. 1 TiB per slice
BOOL_WORDS = ("1", "0", "true", "false", "yes", "no")
_HOST = re.compile(r"[A-Za-z0-9._:\[\]%-]+")


def _bad(name: str, text: str, want: str) -> ConfigError:
    return ConfigError(f"{name}={shown(text)}: {want}")


def _chunk_mb(name: str, text: str) -> None:
    try:
        mb = float(text)
    except ValueError:
        raise _bad(name, text, "expected a number of MiB (0: no slicing)") from None
    if not math.isfinite(mb) or not (mb == 0 or CHUNK_MB_MIN <= mb <= CHUNK_MB_MAX):
        raise _bad(name, text, f"must be 0 (no slicing) or a number of MiB in [{CHUNK_MB_MIN:g}, {CHUNK_MB_MAX:g}]")


def _bool_word(name: str, text: str) -> None:
    if text.strip().lower() not in BOOL_WORDS:
        raise _bad(name, text, "must be one of " + ", ".join(BOOL_WORDS))


def _port(name: str, text: str) -> None:
    if text.strip() == "":
        return
    if not re.fullmatch(r"\s*\d{1,5}\s*", text) or int(text) > 65535:
        raise _bad(name, text, "must be a TCP port number in [0, 65535] (0: any free port)")


def _host(name: str, text: str) -> None:
    if text and not _HOST.fullmatch(text):
        raise _bad(name, text, "must be a host name or an IP address")


def _threads(name: str, text: str) -> None:
    if "," in text or text.strip() == "":  # OpenMP's nested list form is OpenMP's business
        return
    if not re.fullmatch(r"\s*\d+\s*", text) or not 1 <= int(text) <= 1 << 16:
        raise _bad(name, text, "must be a positive number of threads")


CHECKS = {"LBFL_ALLREDUCE_CHUNK_MB": _chunk_mb, "LBFL_CUDA_AWARE": _bool_word, "MASTER_PORT": _port,
          "MASTER_ADDR": _host, "OMP_NUM_THREADS": _threads}


def _mpi_choice(env: Mapping[str, str]) -> None:
    from ..comm.single import MPI_CHOICES, launched_world_size

    text = env["LBFL_MPI"]
    choice = text.strip().lower() or "auto"
    if choice not in MPI_CHOICES:
        raise _bad("LBFL_MPI", text, "must be auto, 1 (always start MPI) or 0 (never)")
    ranks = launched_world_size(env)
    if choice == "0" and ranks > 1:
        raise _bad("LBFL_MPI", text, f"a launcher started {ranks} ranks, which need MPI to form one job; "
                                     f"unset LBFL_MPI or set it to auto")


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError for the first variable of CHECKS set to a value it does not allow."""
    env = os.environ if environ is None else environ
    for name, check in CHECKS.items():
        if name in env:
            check(name, env[name])
    if "LBFL_MPI" in env:
        _mpi_choice(env)
