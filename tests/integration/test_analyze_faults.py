"""`lbfl analyze` on damaged run directories (one line, exit 2, never a hang) and on runs that
stopped, skipped updates or never finished (telemetry/validate.py, analysis/); each starts from a
tiny run of the CLI."""
import json
import shutil

import h5py
import numpy as np
import pytest

from lbfl_mpi.analysis import read_run as load_run
from lbfl_mpi.analysis import run_record
from lbfl_mpi.analysis.tables import format_comparison, format_run
from lbfl_mpi.telemetry.validate import check_rank_file, read_superblock

from ..conftest import run_lbfl, tiny_run_args

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
    # the tiny run may end near chance (the accuracy warning); no warning about how it ended
    outcome_warnings = [ln for ln in text.splitlines() if ln.lstrip().startswith("WARNING")
                        and (rec["accuracy_warning"] is None or rec["accuracy_warning"] not in ln)]
    assert outcome_warnings == [] and rec["complete"]


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
