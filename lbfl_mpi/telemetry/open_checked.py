"""Open a rank file without ever hanging on damaged metadata.

A SWMR reader retries a bad metadata checksum with a doubling sleep (``H5C__load_entry``: 1 ns, 2 ns,
4 ns, ...; HDF5's default of 100 attempts is for ever), a plain reader fails at once. Rank files that
a SWMR writer has (or had, if killed) open are therefore read in SWMR mode with a bounded number of
attempts, set on the libhdf5 that h5py loaded (h5py does not expose it), and closed files in plain
mode. Used by ``lbfl analyze`` and by a resumed run's :class:`~lbfl_mpi.telemetry.RankLog`; call
:func:`~lbfl_mpi.telemetry.validate.check_rank_file` first (a truncated file is caught there).
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path

import h5py

from .validate import read_superblock

# about a second in all, ample for a live writer's flush
SWMR_READ_ATTEMPTS = 30


@functools.cache
def _hdf5_function(name: str):
    """A C function of the HDF5 library h5py has loaded, or None where it cannot be told apart (not
    Linux, or more than one libhdf5 in the process)."""
    try:
        with open("/proc/self/maps") as fh:
            libs = {line.split()[-1] for line in fh if re.search(r"/libhdf5[-.][^/]*$", line.strip())}
        if len(libs) != 1:
            return None
        return getattr(ctypes.CDLL(libs.pop(), mode=os.RTLD_NOLOAD | os.RTLD_NOW), name)
    except (OSError, AttributeError):
        return None


def _swmr_fapl():
    """File-access properties with SWMR_READ_ATTEMPTS, or None (then HDF5's default applies)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fn = _hdf5_function("H5Pset_metadata_read_attempts")
    if fn is None or fn(ctypes.c_int64(fapl.id), ctypes.c_uint(SWMR_READ_ATTEMPTS)) < 0:
        return None
    return fapl


def open_rank_bounded(path: Path) -> h5py.File:
    """Open a rank file that passed :func:`check_rank_file`.

    SWMR reading only when the superblock says a SWMR writer has (or had, if killed) the file open,
    and then with a bounded number of metadata read attempts: a SWMR reader retries a bad checksum
    (damaged metadata, or a block the writer is still flushing) with a doubling sleep, a plain reader
    fails at once. Either way a damaged file gives an error instead of a hang."""
    sb, _ = read_superblock(path)
    if not (sb and sb.swmr_writer):
        return h5py.File(path, "r")
    fapl = _swmr_fapl()
    if fapl is None:
        return h5py.File(path, "r", swmr=True)
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl))
