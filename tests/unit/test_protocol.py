"""jobs/protocol/run.py and report.py with a fake launcher that writes each run's summary.json from the
arguments it was given (no training): the grid picks the best validation setting, the final runs use
it on every seed, finished runs are skipped, a killed run is resumed, a failed one stops the grid, the
report's paired intervals equal a hand computation, and a bad spec exits 2 with one line. Also the
t quantiles of lbfl_mpi/analysis/paired.py against a table."""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lbfl_mpi.analysis.paired import paired_ci, t975, verdict

from ._jobs import REPO

sys.path.insert(0, str(REPO / "jobs" / "protocol"))
import report as protocol_report  # noqa: E402
import run as protocol  # noqa: E402

FAKE = '''
import json, math, os, sys, time
from pathlib import Path
args = sys.argv[1:]
sets = dict(a.split("=", 1) for a in (args[i + 1] for i, a in enumerate(args) if a == "--set"))
out = Path(sets["run.out_dir"])
t0 = time.time()
with open(sys.argv[0] + ".log", "a") as f:
    f.write(json.dumps(sets) + "\\n")
if sets.get("train.batch_size") == "999" or sets.get("train.lr") == os.environ.get("FAKE_FAIL_LR"):
    sys.exit(1)  # at once: a run that fails fails before the others (FAKE_SLEEP) finish
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
lr, seed = float(sets["train.lr"]), int(sets["run.seed"])
arm = out.parent.name if out.parent.parent.name == "final" else out.parent.parent.name
bonus = {"small": 0.05, "big": 0.0, "copy": 0.01}.get(arm, 0.0)
val_bonus = 0.01 * ("cosine" in sets.get("train.schedule", ""))
out.mkdir(parents=True, exist_ok=True)
summary = {"outcome": "completed", "final_val_acc": 0.9 - 0.1 * abs(math.log2(lr / 0.2)) + val_bonus,
           "final_test_acc": 0.8 + bonus + 0.01 * seed * (arm == "small"), "final_train_acc": 0.99,
           "final_sharpness": 5.0, "step_time_s": 10.0 + seed,
           "mean_scale_factor": 1.5 + 0.1 * seed if arm == "small" else 1.0}
(out / "summary.json").write_text(json.dumps(summary))
with open(sys.argv[0] + ".times", "a") as f:
    f.write(f"{t0} {time.time()}\\n")
'''


@pytest.fixture
def setup(tmp_path, monkeypatch):
    fake = tmp_path / "fake_mpiexec.py"
    fake.write_text(FAKE)
    monkeypatch.setenv("MPIEXEC", f"{sys.executable} {fake}")
    monkeypatch.setenv("MPIEXEC_ARGS", "")
    base = tmp_path / "base.toml"
    base.write_text("[train]\nlr = 0.1\nsteps = 5\n")
    spec = tmp_path / "spec.toml"
    spec.write_text(f'''[protocol]
name = "t"
config = "{base}"
ranks = 1
tune_seeds = [0]
seeds = [1, 2, 3]
baselines = ["big"]

[arm.small]
set = ["train.batch_size=8"]
grid = {{key = "train.lr", multipliers = [0.5, 1, 2, 4]}}

[arm.big]
set = ["train.batch_size=16"]
grid = {{key = "train.lr", multipliers = [0.5, 1, 2, 4]}}

[arm.copy]
set = ["train.batch_size=16", "train.momentum=0.5"]
lr_from = "big"
''')

    def launches() -> list[dict]:
        log = Path(str(fake) + ".log")
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return spec, tmp_path / "runs", launches


def test_the_grid_picks_the_best_validation_lr_and_the_final_runs_use_it(setup):
    spec, runs, launches = setup
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"]) == 0
    tune = launches()
    assert len(tune) == 8  # 2 arms x 4 values x 1 seed; the lr_from arm has no grid
    assert {s["run.name"] for s in tune} == {f"{a}_x{m}" for a in ("small", "big") for m in ("0.5", "1", "2", "4")}
    assert sorted(float(s["train.lr"]) for s in tune if s["train.batch_size"] == "8") == [0.05, 0.1, 0.2, 0.4]
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "final"]) == 0
    final = launches()[8:]
    assert len(final) == 9  # 3 arms x 3 seeds
    # validation is best at lr 0.2 = 2 x 0.1 for every tuned arm, and copy takes big's lr
    assert {s["train.lr"] for s in final} == {"0.2"}
    # seed by seed, the arms in spec order within a seed: a grid cut short leaves whole pairs
    assert [(s["run.name"], s["run.seed"]) for s in final] == [(a, str(k)) for k in (1, 2, 3)
                                                               for a in ("small", "big", "copy")]
    assert all(s["run.overwrite"] == "true" for s in final)


def test_finished_runs_are_skipped_and_a_killed_run_resumes(setup):
    spec, runs, launches = setup
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    n = len(launches())
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "all"]) == 0
    assert len(launches()) == n  # nothing to do
    killed = runs / "t" / "final" / "big" / "seed2"
    (killed / "summary.json").unlink()
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "latest.json").write_text("{}")
    gone = runs / "t" / "tune" / "small" / "x4" / "seed0"
    (gone / "summary.json").unlink()
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    again = launches()[n:]
    assert [(s["run.out_dir"], "run.resume" in s) for s in again] == [(str(gone), False), (str(killed), True)]
    assert again[1]["run.resume"] == "auto"


def test_protocol_set_adds_overrides_to_every_run(setup, monkeypatch):
    spec, runs, launches = setup
    monkeypatch.setenv("PROTOCOL_SET", "data.root=/elsewhere/fmnist  train.eval_batch=64")
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"]) == 0
    got = launches()
    assert len(got) == 8 and all(s["data.root"] == "/elsewhere/fmnist" and s["train.eval_batch"] == "64" for s in got)


def test_a_failed_run_stops_the_grid_with_its_exit_code(setup, tmp_path):
    spec, runs, launches = setup
    spec.write_text(spec.read_text().replace('set = ["train.batch_size=8"]', 'set = ["train.batch_size=999"]'))
    with pytest.raises(SystemExit) as e:
        protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"])
    assert e.value.code == 1 and len(launches()) == 1


def test_a_grid_of_words_runs_each_and_the_final_runs_take_the_best(setup):
    spec, runs, launches = setup
    text = spec.read_text().replace(
        'set = ["train.batch_size=8"]\ngrid = {key = "train.lr", multipliers = [0.5, 1, 2, 4]}',
        'set = ["train.batch_size=8", "train.lr=0.2"]\n'
        'grid = {key = "train.schedule", values = ["cosine", "constant"]}')
    assert "train.schedule" in text
    spec.write_text(text)
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"]) == 0
    small = [s for s in launches() if s["train.batch_size"] == "8"]
    assert [(s["run.name"], s["train.schedule"]) for s in small] == [("small_cosine", "'cosine'"),
                                                                      ("small_constant", "'constant'")]
    assert (runs / "t" / "tune" / "small" / "constant" / "seed0" / "summary.json").is_file()
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "final"]) == 0
    final = [s for s in launches()[len(small) + 4:] if s["train.batch_size"] == "8"]
    assert {s["train.schedule"] for s in final} == {"'cosine'"} and len(final) == 3  # val 0.91 > 0.90
    text = protocol_report.report(protocol.load_spec(spec), runs / "t")
    assert "| small | train.schedule | cosine | 0.9100 | **yes** |" in text
    assert "| small | train.schedule | constant | 0.9000 |  |" in text


def test_parallel_runs_overlap_and_give_what_one_at_a_time_gives(setup, tmp_path, monkeypatch):
    spec, runs, launches = setup
    assert protocol.main([str(spec), "--runs", str(runs / "one")]) == 0
    one = protocol_report.report(protocol.load_spec(spec), runs / "one" / "t")
    monkeypatch.setenv("FAKE_SLEEP", "0.3")
    assert protocol.main([str(spec), "--runs", str(runs / "three"), "--parallel", "3"]) == 0
    three = protocol_report.report(protocol.load_spec(spec), runs / "three" / "t")
    assert three.replace(str(runs / "three"), str(runs / "one")) == one
    assert len(launches()) == 2 * 17
    times = sorted(tuple(map(float, x.split())) for x in (tmp_path / "fake_mpiexec.py.times").read_text().split("\n")
                   if x)[17:]  # the parallel grid's runs
    assert any(b[0] < a[1] for a, b in zip(times, times[1:]))  # some run started before the one before ended
    assert (runs / "three" / "t" / "final" / "big" / "seed1.log").is_file()


def test_a_failed_run_in_parallel_lets_the_others_finish_and_stops(setup, monkeypatch):
    spec, runs, launches = setup
    monkeypatch.setenv("FAKE_FAIL_LR", "0.1")  # small x1, the second of the first three
    monkeypatch.setenv("FAKE_SLEEP", "1.0")  # the others end well after the failure is seen
    with pytest.raises(SystemExit) as e:
        protocol.main([str(spec), "--runs", str(runs), "--stage", "tune", "--parallel", "3"])
    assert e.value.code == 1 and len(launches()) == 3  # the first three started; none after the failure
    assert len(list((runs / "t" / "tune").glob("*/*/seed0/summary.json"))) == 2  # the other two finished


def test_an_lr_matched_arm_runs_after_its_target_at_lr_times_its_mean_scale_factor(setup):
    spec, runs, launches = setup
    spec.write_text(spec.read_text() + '\n[arm.matched]\nset = ["train.batch_size=16"]\nlr_matched = "small"\n')
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"]) == 0
    n = len(launches())
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "final"]) == 0
    final = launches()[n:]
    assert [s["run.name"] for s in final][-3:] == ["matched"] * 3  # after every other arm's runs
    # small's mean_scale_factor over seeds 1, 2, 3: 1.6, 1.7, 1.8 -> 1.7; the base lr 0.1 x 1.7
    assert {s["train.lr"] for s in final if s["run.name"] == "matched"} == {repr(0.1 * 1.7)}
    text = protocol_report.report(protocol.load_spec(spec), runs / "t")
    assert "| matched | - | - | - | lr x mean scale factor of small |" in text


def test_an_lr_matched_arm_waits_for_its_target(setup, capsys):
    spec, runs, launches = setup
    spec.write_text(spec.read_text() + '\n[arm.matched]\nset = ["train.batch_size=16"]\nlr_matched = "small"\n')
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"]) == 0
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "final", "--dry"]) == 0
    err = capsys.readouterr().err
    assert "protocol: arm matched: waits for the final runs of small" in err


def test_report_pairs_the_seeds_as_computed_by_hand(setup):
    spec, runs, _ = setup
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    text = protocol_report.report(protocol.load_spec(spec), runs / "t")
    # small - big per seed s: 0.05 + 0.01 s for s = 1, 2, 3
    d = [0.05 + 0.01 * s for s in (1, 2, 3)]
    m, h = statistics.mean(d), 4.303 * statistics.stdev(d) / math.sqrt(3)
    assert f"| small | big | 3 | {m:+.4f} | [{m - h:+.4f}, {m + h:+.4f}] | **held** |" in text
    assert "| copy | big | 3 | +0.0100 | [+0.0100, +0.0100] |" in text
    assert "| big | train.lr | x2 (0.2) | 0.9000 | **yes** |" in text
    assert "Trials per tuned arm: small 4, big 4" in text and "unequal" not in text


def test_compare_pairs_are_reported_after_the_baselines_as_computed_by_hand(setup):
    spec, runs, _ = setup
    spec.write_text(spec.read_text().replace('baselines = ["big"]', 'baselines = ["big"]\ncompare = ["small:copy", '
                                             '"copy:big"]'))
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    loaded = protocol.load_spec(spec)
    assert loaded.compare == [("small", "copy"), ("copy", "big")]
    rows = [r for r in protocol_report.report(loaded, runs / "t").splitlines() if r.count("|") == 7
            and r.split("|")[2].strip() in ("big", "copy")]
    # small - copy per seed s: (0.85 + 0.01 s) - 0.81; copy:big is a baseline pair already, listed once
    d = [0.04 + 0.01 * s for s in (1, 2, 3)]
    m, h = statistics.mean(d), 4.303 * statistics.stdev(d) / math.sqrt(3)
    assert [r.split("|")[1:3] for r in rows] == [[" small ", " big "], [" copy ", " big "], [" small ", " copy "]]
    assert rows[2].startswith(f"| small | copy | 3 | {m:+.4f} | [{m - h:+.4f}, {m + h:+.4f}] | **held** |")


def test_b_simple_is_the_median_of_each_half_of_rank_0s_noise_scale(setup):
    spec, runs, _ = setup
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    seeds = {1: [math.nan, 1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 40.0], 2: [5.0, 6.0, 7.0, 50.0, 60.0, 70.0]}
    for seed, col in seeds.items():  # rank files as h5log writes them, beside the fake summaries
        with h5py.File(protocol.final_dir(runs / "t", "big", seed) / "rank0000.h5", "w") as f:
            f.create_group("steps").create_dataset("noise_scale", data=np.array(col))
    def halves(seed):
        r = protocol_report.rank0(protocol.final_dir(runs / "t", "big", seed))
        return r["noise_early"], r["noise_late"]

    assert halves(1) == (2.0, 25.0)
    assert halves(2) == (6.0, 60.0)
    assert all(math.isnan(x) for x in halves(3))
    text = protocol_report.report(protocol.load_spec(spec), runs / "t")
    (row,) = [line for line in text.splitlines() if line.startswith("| big | train.lr=0.2 |")]
    early, late = statistics.mean([2.0, 6.0]), statistics.mean([25.0, 60.0])  # over the seeds that have it
    assert (f"| {early:.1f} +- {statistics.stdev([2.0, 6.0]):.1f} / {late:.1f} +- "
            f"{statistics.stdev([25.0, 60.0]):.1f} |") in row


def test_keep_archives_each_finished_run_and_a_wiped_run_dir_resumes_from_it(setup, tmp_path):
    spec, runs, launches = setup
    keep = tmp_path / "archive"
    assert protocol.main([str(spec), "--runs", str(runs / "a"), "--stage", "tune", "--keep", str(keep)]) == 0
    tune = sorted((runs / "a" / "t").rglob("summary.json"))
    assert len(tune) == 8 and [p.relative_to(runs / "a") for p in tune] == \
        [p.relative_to(keep) for p in sorted(keep.rglob("summary.json"))]
    assert all((keep / p.relative_to(runs / "a")).read_bytes() == p.read_bytes() for p in tune)
    run = protocol.tune_dir(runs / "a" / "t", protocol.load_spec(spec).arms["big"], "x2", 0)
    for name in ("config.toml", "rank0000.h5", "rank0001.h5"):  # what a real run leaves beside its summary
        (run / name).write_text(name)
    (run / "checkpoints").mkdir()
    kept = keep / "t" / run.relative_to(runs / "a" / "t")
    (kept / "summary.json").unlink()  # a run that ended while nobody archived
    assert protocol.main([str(spec), "--runs", str(runs / "a"), "--stage", "final", "--keep", str(keep)]) == 0
    final = launches()[8:]
    assert len(final) == 9 and {s["train.lr"] for s in final} == {"0.2"}
    assert sorted(p.name for p in kept.iterdir()) == ["config.toml", "rank0000.h5", "summary.json"]
    assert len(list(keep.rglob("summary.json"))) == 17
    # a new sitting: run dir B starts empty, and the archive supplies every run: nothing runs again
    assert protocol.main([str(spec), "--runs", str(runs / "b"), "--keep", str(keep), "--out",
                          str(tmp_path / "b.md")]) == 0
    assert len(launches()) == 17
    assert (runs / "b" / "t" / run.relative_to(runs / "a" / "t") / "rank0000.h5").read_text() == "rank0000.h5"
    loaded = protocol.load_spec(spec)
    from_a = protocol_report.report(loaded, runs / "a" / "t")
    assert (tmp_path / "b.md").read_text().replace(str(runs / "b"), str(runs / "a")) == from_a
    assert protocol_report.report(loaded, keep / "t").replace(str(keep), str(runs / "a")) == from_a
    assert "| small | big | 3 |" in from_a


def test_keep_must_not_be_the_run_dir(setup, capsys):
    spec, runs, launches = setup
    assert protocol.main([str(spec), "--runs", str(runs), "--keep", str(runs)]) == 2
    assert capsys.readouterr().err.startswith("protocol: error: --keep=") and launches() == []


@pytest.mark.parametrize("edit,fragment", [
    (('baselines = ["big"]', 'baselines = ["nope"]'), "protocol.baselines: 'nope' is not an arm"),
    (('lr_from = "big"', 'lr_from = "copy"'), "arm.copy.lr_from='copy'"),
    (('set = ["train.batch_size=8"]', 'set = ["train.batch_size=8"]\nbogus = 1'), "arm.small: unknown keys"),
    (('set = ["train.batch_size=8"]', 'set = ["train.momentum=-1"]'), "arm.small: train.momentum=-1"),
    (("seeds = [1, 2, 3]", "seeds = [1, 1]"), "protocol.seeds=[1, 1]"),
    (('baselines = ["big"]', 'baselines = ["big"]\ncompare = ["small:nope"]'), "protocol.compare: 'small:nope'"),
    (('baselines = ["big"]', 'baselines = ["big"]\ncompare = ["small"]'), "protocol.compare: 'small' must be"),
    (('baselines = ["big"]', 'baselines = ["big"]\ncompare = ["big:big"]'), "two different arms"),
    (('baselines = ["big"]', 'baselines = ["big"]\ncompare = "small:big"'), "protocol.compare='small:big'"),
    (('lr_from = "big"', 'lr_matched = "nope"'), "arm.copy.lr_matched='nope': must name another arm"),
    (('lr_from = "big"', 'lr_matched = "copy"'), "arm.copy.lr_matched='copy': must name another arm"),
    (('lr_from = "big"', 'lr_from = "big"\nlr_matched = "small"'), "lr_from and lr_matched exclude each other"),
    (("multipliers = [0.5, 1, 2, 4]}}\n\n[arm.big]", "multipliers = []}}\n\n[arm.big]"), "arm.small.grid"),
    (("multipliers = [0.5, 1, 2, 4]}}\n\n[arm.big]", "multipliers = [\"a\"]}}\n\n[arm.big]"), "arm.small.grid"),
    (("multipliers = [0.5, 1, 2, 4]}}\n\n[arm.big]", "values = [\"a/b\"]}}\n\n[arm.big]"), "arm.small.grid"),
    (("multipliers = [0.5, 1, 2, 4]}}\n\n[arm.big]", "values = [1, 1]}}\n\n[arm.big]"), "arm.small.grid"),
])
def test_a_bad_spec_exits_2_with_one_line_before_anything_runs(setup, capsys, edit, fragment):
    spec, runs, launches = setup
    text = spec.read_text()
    old, new = edit
    old = old.replace("}}", "}")
    new = new.replace("}}", "}")
    assert old in text
    spec.write_text(text.replace(old, new, 1))
    assert protocol.main([str(spec), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("protocol: error:") and fragment in err and "\n" not in err, err
    assert launches() == []


def test_t_quantiles_and_the_paired_interval():
    table = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 30: 2.042}
    for df, t in table.items():
        assert t975(df) == t
    assert abs(t975(60) - 2.000) < 0.003 and abs(t975(120) - 1.980) < 0.003
    a, b = [0.81, 0.84, 0.80, 0.86], [0.80, 0.80, 0.79, 0.81]
    d = [x - y for x, y in zip(a, b)]
    m, lo, hi = paired_ci(a, b)
    h = 3.182 * statistics.stdev(d) / 2
    assert math.isclose(m, statistics.mean(d)) and math.isclose(lo, m - h) and math.isclose(hi, m + h)
    assert lo < 0 < hi and verdict(lo, hi).startswith("**not held** (the interval includes 0")
    assert verdict(0.01, 0.2) == "**held**" and verdict(-0.2, -0.1).startswith("**not held** (the reverse")
    assert paired_ci([1.0], [0.5])[1:] == (-math.inf, math.inf)


def test_a_reading_the_runs_did_not_take_is_a_dash_and_the_pairs_still_count(setup):
    """summary.json writes null for a reading a run did not take (final_sharpness without
    train.eval_sharpness_iters): the report shows '-' there and pairs the test accuracies as before."""
    spec, runs, _ = setup
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    for arm in ("small", "big", "copy"):
        for seed in (1, 2, 3):
            f = protocol.final_dir(runs / "t", arm, seed) / "summary.json"
            f.write_text(json.dumps(json.loads(f.read_text()) | {"final_sharpness": None, "final_val_acc": None}))
    text = protocol_report.report(protocol.load_spec(spec), runs / "t")
    (row,) = [line for line in text.splitlines() if line.startswith("| big | train.lr=0.2 |")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "3" and cells[4] == "-" and cells[7] == "-"  # n, val acc, sharpness
    assert cells[3] == protocol_report.mean_std([0.8, 0.8, 0.8])
    d = [0.05 + 0.01 * s for s in (1, 2, 3)]
    m, h = statistics.mean(d), 4.303 * statistics.stdev(d) / math.sqrt(3)
    assert f"| small | big | 3 | {m:+.4f} | [{m - h:+.4f}, {m + h:+.4f}] | **held** |" in text


def test_a_spec_without_grids_reports_none_instead_of_a_row_per_arm(setup):
    spec, runs, _ = setup
    text = spec.read_text()
    for g in ('grid = {key = "train.lr", multipliers = [0.5, 1, 2, 4]}\n', 'lr_from = "big"\n'):
        text = text.replace(g, "")
    spec.write_text(text.replace('"train.batch_size=8"]', '"train.batch_size=8", "train.lr=0.2"]')
                    .replace('"train.batch_size=16"]', '"train.batch_size=16", "train.lr=0.2"]')
                    .replace('"train.momentum=0.5"]', '"train.momentum=0.5", "train.lr=0.2"]'))
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    out = protocol_report.report(protocol.load_spec(spec), runs / "t")
    grid = out.split("## Grid", 1)[1].split("## Final runs", 1)[0]
    assert grid.strip() == "None: every arm runs as set (no `grid` in the spec)."
    assert "| small | big | 3 | +0.0700 |" in out  # small - big per seed: 0.05 + 0.01 s, mean 0.07


def test_a_grid_of_numbers_shows_each_value_once_and_multipliers_with_the_value_they_give(setup):
    spec, runs, _ = setup
    spec.write_text(spec.read_text().replace(
        'set = ["train.batch_size=8"]\ngrid = {key = "train.lr", multipliers = [0.5, 1, 2, 4]}',
        'set = ["train.batch_size=8"]\ngrid = {key = "train.lr", values = [0.2, 0.4]}'))
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"]) == 0
    text = protocol_report.report(protocol.load_spec(spec), runs / "t")
    assert "| small | train.lr | 0.2 | 0.9000 | **yes** |" in text  # not "0.2 (0.2)"
    assert "| small | train.lr | 0.4 | 0.8000 |  |" in text
    assert "| big | train.lr | x2 (0.2) | 0.9000 | **yes** |" in text


def test_without_a_baseline_the_final_table_has_no_time_ratio_column(setup):
    spec, runs, _ = setup
    spec.write_text(spec.read_text().replace('baselines = ["big"]\n', ""))
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    out = protocol_report.report(protocol.load_spec(spec), runs / "t")
    table = out.split("## Final runs", 1)[1].split("## Paired", 1)[0].strip().splitlines()[2:]
    assert "time vs" not in table[0] and table[0].endswith("| train time (s) | not completed |")
    assert {r.count("|") for r in table} == {12}  # header, rule and the 3 arms' rows alike
    (row,) = [r for r in table if r.startswith("| big |")]
    assert row.endswith(f"| {statistics.mean([11.0, 12.0, 13.0]):.1f} +- 1.0 | - |")  # step_time_s 10 + seed


def test_an_arm_whose_grid_is_unfinished_is_not_chosen_yet_in_the_final_table(setup):
    spec, runs, _ = setup
    assert protocol.main([str(spec), "--runs", str(runs), "--stage", "tune"]) == 0
    (protocol.tune_dir(runs / "t", protocol.load_spec(spec).arms["big"], "x4", 0) / "summary.json").unlink()
    text = protocol_report.report(protocol.load_spec(spec), runs / "t")
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in
            text.split("## Final runs", 1)[1].split("## Paired", 1)[0].splitlines() if r.startswith("| ")}
    # small's grid is whole (lr x2 = 0.2 is best); big misses x4, and copy takes big's lr
    assert rows == {"arm": "setting", "small": "train.lr=0.2", "big": "not chosen yet", "copy": "not chosen yet"}


def test_the_report_groups_the_final_runs_by_their_rank_files_cpu_attribute(setup):
    spec, runs, _ = setup
    assert protocol.main([str(spec), "--runs", str(runs)]) == 0
    hosts = {("big", 1): "CPU A, AVX512, 1 threads", ("big", 2): "CPU A, AVX512, 1 threads",
             ("small", 3): "CPU B, AVX2, 1 threads", ("copy", 1): None}  # None: a rank file without it

    def write_rank0(arm, seed, cpu):
        with h5py.File(protocol.final_dir(runs / "t", arm, seed) / "rank0000.h5", "w") as f:
            f.create_group("steps")
            if cpu is not None:
                f.attrs["cpu"] = cpu

    for (arm, seed), cpu in hosts.items():
        write_rank0(arm, seed, cpu)
    loaded = protocol.load_spec(spec)
    lines = protocol_report.report(loaded, runs / "t").splitlines()
    at = lines.index("| cpu | runs | arm seed |")
    # 9 completed final runs (3 arms x 3 seeds): 2 on CPU A, 1 on CPU B, the other 6 without the attribute
    assert lines[at + 2:at + 5] == ["| not recorded | 6 | small 1, small 2, big 3, copy 1, copy 2, copy 3 |",
                                    "| CPU A, AVX512, 1 threads | 2 | big 1, big 2 |",
                                    "| CPU B, AVX2, 1 threads | 1 | small 3 |"]
    for arm in ("small", "big", "copy"):  # one host for all
        for seed in (1, 2, 3):
            write_rank0(arm, seed, "CPU A, AVX512, 1 threads")
    text = protocol_report.report(loaded, runs / "t")
    assert text.endswith("Every completed final run (9): CPU A, AVX512, 1 threads.\n") and "| cpu |" not in text
