"""`lbfl analyze` on damaged run directories (one line, exit 2, never a hang) and on runs that
stopped, skipped updates or never finished (telemetry/validate.py, analysis/)."""
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

from lbfl_mpi.analysis import load_run, run_record
from lbfl_mpi.analysis.load import AnalysisError, read_rank
from lbfl_mpi.analysis.tables import format_comparison, format_run
from lbfl_mpi.telemetry import validate
from lbfl_mpi.telemetry.open_checked import _hdf5_function
from lbfl_mpi.telemetry.validate import check_rank_file, lookup3, read_superblock

from ..conftest import ROOT, _env, run_lbfl, tiny_run_args

ANALYZE_TIMEOUT = 60  # a hang fails the test instead of blocking the suite


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "base"
    run_lbfl(tiny_run_args(out, "run.name=base"))
    return out


@pytest.fixture
def run_dir(base_run, tmp_path):
    """A private copy of the finished tiny run."""
    return shutil.copytree(base_run, tmp_path / "run")


def analyze(*args):
    return run_lbfl(["analyze", *map(str, args)], check=False, timeout=ANALYZE_TIMEOUT)


def assert_one_line_error(p, path, reason):
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"lbfl analyze: error: {path}: "), lines[0]
    assert reason in lines[0], lines[0]


def _reject(name):
    raise ValueError(f"non-standard JSON constant {name}")


# ------------------------------------------------------------------------ check_rank_file


def test_lookup3_matches_the_reference_vectors():
    # from Bob Jenkins' lookup3.c driver5()
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def test_intact_rank_file_passes(base_run):
    path = base_run / "rank0000.h5"
    sb, size = read_superblock(path)
    assert sb.version == 3 and sb.flags == 0 and sb.eof == size  # closed cleanly, checksum verified
    assert check_rank_file(path) is None


@pytest.mark.parametrize("cut", [1, 8, 9, 30, 47, 48, 1000, 0.25, 0.5, 0.9, -1])
def test_truncated_rank_file_is_named(base_run, tmp_path, cut):
    data = (base_run / "rank0000.h5").read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut if cut > 0 else len(data) + cut
    path = tmp_path / "rank0000.h5"
    path.write_bytes(data[:n])
    reason = check_rank_file(path)
    if n < 8:
        assert reason == "not an HDF5 file (no HDF5 format signature)"
    elif n < 48:
        assert reason == "truncated (file ends inside the HDF5 superblock)"
    else:
        assert reason == f"truncated (file is {n} bytes, the HDF5 superblock says {len(data)})"


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
                       timeout=ANALYZE_TIMEOUT)
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
                       text=True, timeout=ANALYZE_TIMEOUT)
    assert q.returncode == 0, q.stderr
    results = json.loads(q.stdout)
    # a copy can also catch a metadata block half rewritten: a checksum error, reported at once
    assert all(isinstance(r, int) or ": truncated (" in r or ": unreadable HDF5 file (" in r for r in results), results
    assert sum(isinstance(r, int) for r in results) >= len(results) // 2, results


# ------------------------------------------------------------------------- lbfl analyze: bad input


def test_random_bytes_rank_file(run_dir):
    f = run_dir / "rank0000.h5"
    f.write_bytes(np.random.default_rng(1).bytes(f.stat().st_size))
    assert_one_line_error(analyze(run_dir), f, "not an HDF5 file")


def test_truncated_rank_file_does_not_hang(run_dir):
    f = run_dir / "rank0000.h5"
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2])
    assert_one_line_error(analyze(run_dir), f, f"truncated (file is {len(data) // 2} bytes, the HDF5 "
                                               f"superblock says {len(data)})")


@pytest.mark.parametrize("text,reason", [(None, "invalid JSON ("), ("", "invalid JSON ("),
                                         ("[1, 2]", "invalid summary (not a JSON object)"),
                                         (b"\xff\xfe\x00garbage", "invalid JSON (")])
def test_invalid_summary_json(run_dir, text, reason):
    f = run_dir / "summary.json"
    if text is None:
        text = f.read_text()[:len(f.read_text()) // 2]
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_one_line_error(analyze(run_dir), f, reason)


@pytest.mark.parametrize("text,reason", [("[sync\nmode = 1", "invalid TOML ("), ("sync = 3\n", "[sync] is not a table"),
                                         ("[train]\nlr = 0.1\nlr = 0.2\n", "invalid TOML (")])
def test_invalid_config_toml(run_dir, text, reason):
    f = run_dir / "config.toml"
    f.write_text(text)
    assert_one_line_error(analyze(run_dir), f, reason)


def test_plots_dir_under_a_regular_file(run_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    plots = blocker / "plots"
    assert_one_line_error(analyze(run_dir, "--plots", plots), plots, "cannot create the plots directory")
    assert_one_line_error(analyze(run_dir, "--plots", blocker), blocker, "cannot create the plots directory")


def test_first_bad_run_of_several_is_named(run_dir, base_run):
    (run_dir / "rank0000.h5").write_bytes(b"")
    p = analyze(base_run, run_dir)
    assert_one_line_error(p, run_dir / "rank0000.h5", "empty file (0 bytes)")
    assert p.stdout == ""


# ------------------------------------------------------------------------------- outcome flags


def _edit_summary(run_dir, **changes):
    f = run_dir / "summary.json"
    s = json.loads(f.read_text())
    for k, v in changes.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    f.write_text(json.dumps(s, indent=2))
    return s


def _record(run_dir):
    rec = run_record(load_run(run_dir))
    return rec, format_run(rec)


def test_old_summary_without_outcome_keys_is_completed(run_dir):
    _edit_summary(run_dir, outcome=None, nonfinite=None, nonfinite_skips=None)
    rec, text = _record(run_dir)
    assert (rec["outcome"], rec["nonfinite"], rec["nonfinite_skips"]) == ("completed", None, 0)
    assert "WARNING" not in text and rec["complete"]


@pytest.mark.parametrize("quantity", ["loss", "grad_norm"])
def test_nonfinite_stop_is_flagged(run_dir, quantity):
    _edit_summary(run_dir, outcome="nonfinite_stop", nonfinite={"step": 17, "quantity": quantity},
                  nonfinite_skips=0, final_test_acc=float("nan"))
    rec, text = _record(run_dir)
    assert rec["outcome"] == "nonfinite_stop" and rec["nonfinite"] == {"step": 17, "quantity": quantity}
    assert f"\n   WARNING: stopped at step 17: non-finite {quantity}\n" in text
    assert rec["final_test_acc"] == pytest.approx(float(load_run(run_dir).eval_curve()["test_acc"][-1]))
    assert format_comparison([rec, rec]).splitlines()[1].endswith(f"stop@17 {quantity}")


def test_stop_with_rank_and_null_accuracy(run_dir):
    """What the trainer writes: strict JSON (NaN as null) and the rank that saw the value."""
    _edit_summary(run_dir, outcome="nonfinite_stop", nonfinite={"step": 3, "quantity": "loss", "rank": 2},
                  final_test_acc=None, best_test_acc=None, best_step=-1)
    rec, text = _record(run_dir)
    assert "WARNING: stopped at step 3: non-finite loss on rank 2" in text
    assert np.isfinite(rec["final_test_acc"])  # from the eval log instead


def test_skipped_updates_are_flagged(run_dir):
    _edit_summary(run_dir, outcome="completed", nonfinite_skips=3)
    rec, text = _record(run_dir)
    assert rec["outcome"] == "completed" and rec["nonfinite_skips"] == 3
    assert "\n   WARNING: 3 updates skipped (non-finite)\n" in text
    _edit_summary(run_dir, nonfinite_skips=1)
    assert "WARNING: 1 update skipped (non-finite)" in _record(run_dir)[1]
    table = format_comparison([_record(run_dir)[0], run_record(load_run(run_dir))])
    assert table.splitlines()[0].endswith("outcome") and table.splitlines()[1].endswith("completed +1 skipped")


def _mark_skips(path, rows):
    """Set ``nonfinite_skip`` to 1 at ``rows`` (creating the column in files from before it)."""
    with h5py.File(path, "r+") as f:
        g = f["steps"]
        if "nonfinite_skip" not in g:
            g.create_dataset("nonfinite_skip", data=np.zeros(g["step"].shape[0], dtype=np.int8), maxshape=(None,))
        col = g["nonfinite_skip"][:]
        col[rows] = 1
        g["nonfinite_skip"][:] = col


def test_run_without_summary_is_incomplete_and_counts_skips_from_the_log(run_dir):
    (run_dir / "summary.json").unlink()
    _mark_skips(run_dir / "rank0000.h5", [2, 5])
    rec, text = _record(run_dir)
    assert rec["outcome"] == "incomplete" and not rec["complete"] and rec["nonfinite_skips"] == 2
    assert "WARNING: incomplete run (no summary.json: killed, preempted or still running)" in text
    assert "WARNING: 2 updates skipped (non-finite)" in text
    assert format_comparison([rec, rec]).splitlines()[1].endswith("incomplete +2 skipped")


def test_summary_count_wins_over_the_log(run_dir):
    _mark_skips(run_dir / "rank0000.h5", [1])
    _edit_summary(run_dir, nonfinite_skips=4)
    assert _record(run_dir)[0]["nonfinite_skips"] == 4
    _edit_summary(run_dir, nonfinite_skips=None)  # an old summary: no key, no skips reported
    assert _record(run_dir)[0]["nonfinite_skips"] == 0


def test_other_outcomes_are_flagged(run_dir):
    _edit_summary(run_dir, outcome="preempted")
    rec, text = _record(run_dir)
    assert rec["outcome"] == "preempted" and "WARNING: run ended early (outcome 'preempted')" in text


def test_cli_text_and_strict_json_for_a_stopped_run(run_dir, base_run):
    f = run_dir / "summary.json"
    s = json.loads(f.read_text())
    s.update(outcome="nonfinite_stop", nonfinite={"step": 17, "quantity": "loss"}, nonfinite_skips=2,
             wall_time_s=float("nan"), samples_per_s=float("inf"))
    f.write_text(json.dumps(s))  # NaN/Infinity as older runs wrote them
    p = analyze(run_dir, base_run)
    assert p.returncode == 0, p.stderr
    assert "WARNING: stopped at step 17: non-finite loss" in p.stdout
    assert "WARNING: 2 updates skipped (non-finite)" in p.stdout
    rows = p.stdout.strip().splitlines()[-2:]
    assert rows[0].endswith("stop@17 loss +2 skipped") and rows[1].endswith("completed")
    p = analyze(run_dir, base_run, "--json")
    assert p.returncode == 0 and "NaN" not in p.stdout and "Infinity" not in p.stdout
    recs = json.loads(p.stdout, parse_constant=_reject)
    assert recs[0]["wall_time_s"] is None and recs[0]["samples_per_s"] is None
    assert (recs[0]["outcome"], recs[0]["nonfinite_skips"], recs[1]["outcome"]) == ("nonfinite_stop", 2, "completed")


def test_record_of_a_missing_run_dir_is_an_error(tmp_path):
    with pytest.raises(AnalysisError, match="not a run directory"):
        load_run(tmp_path / "nothing")
