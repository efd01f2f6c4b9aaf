"""The rank-file check and reader on files made here (telemetry/validate.py, analysis/load.py): HDF5
superblocks of every version, files that are not HDF5, and files of killed or still-running writers.
`lbfl analyze` on damaged runs: tests/integration/test_analyze_faults.py."""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from lbfl_mpi.analysis import read_run as load_run
from lbfl_mpi.analysis.load import AnalysisError, read_rank
from lbfl_mpi.telemetry import validate
from lbfl_mpi.telemetry.open_checked import _hdf5_function
from lbfl_mpi.telemetry.validate import check_rank_file, lookup3, read_superblock

from ..conftest import ROOT, _env

READ_TIMEOUT = 60  # a hang fails the test instead of blocking the suite


# ------------------------------------------------------------------------ check_rank_file


def test_lookup3_matches_the_reference_vectors():
    # from Bob Jenkins' lookup3.c driver5()
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def test_non_hdf5_inputs_are_named(tmp_path):
    empty, rnd, folder = tmp_path / "empty.h5", tmp_path / "random.h5", tmp_path / "dir.h5"
    empty.write_bytes(b"")
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    folder.mkdir()
    assert check_rank_file(empty) == "empty file (0 bytes)"
    assert check_rank_file(rnd) == "not an HDF5 file (no HDF5 format signature)"
    assert check_rank_file(folder) == "not a regular file"
    assert check_rank_file(tmp_path / "missing.h5").startswith("cannot read (")
    bad = bytearray(_small_file(tmp_path / "ok.h5", "latest"))
    bad[20] ^= 0xFF  # superblock extension address: the checksum no longer matches
    (tmp_path / "bad.h5").write_bytes(bytes(bad))
    assert check_rank_file(tmp_path / "bad.h5") == "corrupt HDF5 superblock (checksum mismatch)"


def _small_file(path, low, fcpl=None):
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds({"earliest": h5py.h5f.LIBVER_EARLIEST, "v108": h5py.h5f.LIBVER_V18,
                            "latest": h5py.h5f.LIBVER_LATEST}[low], h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)
    with h5py.File(fid) as f:
        f["x"] = np.arange(1000.0)
    return path.read_bytes()


def _istore_fcpl():
    """File-creation properties that make HDF5 write a version 1 superblock (non-default istore K)."""
    fn = _hdf5_function("H5Pset_istore_k")
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    if fn is None or fn(ctypes.c_int64(fcpl.id), ctypes.c_uint(64)) < 0:
        pytest.skip("H5Pset_istore_k not reachable")
    return fcpl


@pytest.mark.parametrize("version,low,userblock", [(0, "earliest", 0), (1, "earliest", 0), (2, "v108", 0),
                                                   (3, "latest", 0), (0, "earliest", 1024), (3, "latest", 4096)])
def test_every_superblock_version_and_user_blocks(tmp_path, version, low, userblock):
    fcpl = _istore_fcpl() if version == 1 else h5py.h5p.create(h5py.h5p.FILE_CREATE)
    if userblock:
        fcpl.set_userblock(userblock)
    path = tmp_path / "f.h5"
    data = _small_file(path, low, fcpl)
    sb, size = read_superblock(path)
    assert (sb.version, sb.offset, sb.eof) == (version, userblock, size)
    assert check_rank_file(path) is None
    path.write_bytes(data[:-100])
    assert check_rank_file(path) == f"truncated (file is {len(data) - 100} bytes, the HDF5 superblock says {len(data)})"


def test_a_writer_mid_flush_is_re_read_before_it_is_called_truncated(tmp_path, monkeypatch):
    """A live writer's superblock can run ahead of its bytes for a moment; only a file whose
    superblock says a writer has it open is re-read, and a short file is never passed."""
    monkeypatch.setattr(validate, "LIVE_WAIT_S", 0.0)
    seen = iter([("truncated (x)", True), ("truncated (x)", True), (None, False)])
    monkeypatch.setattr(validate, "_check_once", lambda p: next(seen))
    assert check_rank_file(tmp_path / "f.h5") is None
    calls = []
    monkeypatch.setattr(validate, "_check_once", lambda p: calls.append(p) or ("truncated (x)", True))
    assert check_rank_file(tmp_path / "f.h5") == "truncated (x)" and len(calls) == 1 + validate._LIVE_RECHECKS
    calls.clear()
    monkeypatch.setattr(validate, "_check_once", lambda p: calls.append(p) or ("truncated (x)", False))
    assert check_rank_file(tmp_path / "f.h5") == "truncated (x)" and len(calls) == 1


# ------------------------------------------------------------------- files of live and killed writers

WRITER = textwrap.dedent("""
    import os, signal, sys, time
    from lbfl_mpi.telemetry.h5log import RankLog, STEP_COLUMNS
    log = RankLog(sys.argv[1], rank=0, world_size=1, config_json="{}", device="cpu", flush_every=1)
    n = int(sys.argv[2])
    for s in range(n if n > 0 else 10**9):
        log.log_step(**{c: (s if c == "step" else 0.5) for c in STEP_COLUMNS})
        if s % 5 == 0:
            log.log_eval(s, 0.1, 0.2)
    log.flush()
    print("flushed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _writer(path, rows):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rows)], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def test_file_of_a_killed_writer_passes_and_reads(tmp_path):
    path = tmp_path / "rank0000.h5"
    p = _writer(path, 23)
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    sb, size = read_superblock(path)
    assert sb.swmr_writer and size >= sb.eof  # the flags of a SWMR writer stay set after a kill
    assert check_rank_file(path) is None
    r = read_rank(path, 0)
    np.testing.assert_array_equal(r.steps["step"], np.arange(23))
    assert r.eval["step"].tolist() == [0, 5, 10, 15, 20]


def test_damaged_file_of_a_killed_writer_fails_within_seconds(tmp_path):
    """Whole-sized but zeroed where the last writes went (a crash that lost them): a SWMR reader
    would retry the bad checksums for ever; the bounded read attempts give an error instead."""
    path = tmp_path / "rank0000.h5"
    p = _writer(path, 40)
    p.communicate(timeout=120)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    assert check_rank_file(path) is None  # nothing a superblock check can see
    t = time.monotonic()
    code = f"from lbfl_mpi.analysis.load import read_rank\nfrom pathlib import Path\nread_rank(Path({str(path)!r}), 0)"
    q = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=READ_TIMEOUT)
    assert q.returncode == 1 and "AnalysisError" in q.stderr and "unreadable HDF5 file" in q.stderr
    assert time.monotonic() - t < 30


def test_copies_of_a_live_file_pass_or_are_named_never_hang(tmp_path):
    """Copies taken while a SWMR writer appends: each one passes and reads, or is named truncated."""
    live = tmp_path / "live.h5"
    p = _writer(live, 0)
    try:
        deadline = time.monotonic() + 60
        while not live.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        copies = []
        for i in range(12):
            time.sleep(0.05)
            dst = tmp_path / f"copy{i:02d}.h5"
            shutil.copyfile(live, dst)
            copies.append(str(dst))
        assert check_rank_file(live) is None
    finally:
        p.kill()
        p.wait()
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from lbfl_mpi.analysis.load import AnalysisError, read_rank
        out = []
        for c in sys.argv[1:]:
            try:
                out.append(int(read_rank(Path(c), 0).steps["step"].size))
            except AnalysisError as e:
                out.append(str(e))
        print(json.dumps(out))
    """)
    q = subprocess.run([sys.executable, "-c", code, *copies], env=_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=READ_TIMEOUT)
    assert q.returncode == 0, q.stderr
    results = json.loads(q.stdout)
    # a copy can also catch a metadata block half rewritten: a checksum error, reported at once
    assert all(isinstance(r, int) or ": truncated (" in r or ": unreadable HDF5 file (" in r for r in results), results
    assert sum(isinstance(r, int) for r in results) >= len(results) // 2, results


def test_record_of_a_missing_run_dir_is_an_error(tmp_path):
    with pytest.raises(AnalysisError, match="not a run directory"):
        load_run(tmp_path / "nothing")
