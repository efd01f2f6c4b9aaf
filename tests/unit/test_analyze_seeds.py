"""`lbfl analyze` over seeds and global batches: seed groups (analysis/seeds.py), the final accuracy by
global batch table and accuracy_vs_batch.png (analysis/batch.py, plots.py), on fake run directories."""
import json

import numpy as np
import pytest

from lbfl_mpi.analysis import analyze_main, run_record
from lbfl_mpi.analysis import read_run as load_run
from lbfl_mpi.analysis.batch import batch_series, batches, format_batch_table
from lbfl_mpi.analysis.seeds import format_seed_groups, group_seeds, summarise

from ._fake_runs import fake_run


def _reject(name):
    raise ValueError(f"non-standard JSON constant {name}")


@pytest.fixture
def seed_grid(tmp_path):
    """Experiment A (lr 0.05) with seeds 0, 1, 2; B (lr 0.1, else as A) with seeds 0, 1; C alone."""
    finals = {"A": [0.91, 0.87, 0.895], "B": [0.80, 0.85]}
    bests = {"A": [0.93, 0.90, 0.90], "B": [0.82, 0.86]}
    dirs = []
    for exp, lr in (("A", 0.05), ("B", 0.1)):
        for seed, (final, best) in enumerate(zip(finals[exp], bests[exp])):
            dirs.append(fake_run(tmp_path / exp / f"seed{seed}", final=final, best=best, seed=seed, name=exp,
                                 train={"lr": lr}, wall=10.0 + seed, bytes_per_step=100 * (seed + 1),
                                 telemetry={"flush_every": 1 + seed}))  # bookkeeping: still one group
    dirs.append(fake_run(tmp_path / "C", final=0.7, name="C", model={"norm": "group"}))
    return dirs, finals, bests


def test_seed_groups_match_numpy(seed_grid):
    """Reference: numpy mean and std(ddof=1) over each group's seeds, computed by hand from the
    values the fake runs were written with."""
    dirs, finals, bests = seed_grid
    runs = [load_run(d) for d in dirs]
    groups = group_seeds(runs)
    assert [(g.label, g.members) for g in groups] == [("A", [0, 1, 2]), ("B", [3, 4]), ("C", [5])]
    summ = summarise(groups, runs, [run_record(r) for r in runs])
    for s, exp in zip(summ[:2], "AB"):
        assert s["n"] == len(finals[exp]) and s["seeds"] == list(range(len(finals[exp])))
        assert s["final_test_acc_mean"] == pytest.approx(np.mean(finals[exp]))
        assert s["final_test_acc_std"] == pytest.approx(np.std(finals[exp], ddof=1))
        assert s["best_test_acc_mean"] == pytest.approx(np.mean(bests[exp]))
        assert s["best_test_acc_std"] == pytest.approx(np.std(bests[exp], ddof=1))
        n = len(finals[exp])
        assert s["wall_time_s_mean"] == pytest.approx(np.mean(10.0 + np.arange(n)))
        assert s["bytes_vs_dense_mean"] == pytest.approx(np.mean(100 * (np.arange(n) + 1) / 1000))
    assert summ[2]["n"] == 1 and summ[2]["final_test_acc_mean"] == 0.7 and np.isnan(summ[2]["final_test_acc_std"])
    rows = {line.split()[0]: line.split() for line in format_seed_groups(summ).splitlines()[2:]}
    assert rows["A"][1:7] == ["3", "0,1,2", f"{np.mean(finals['A']):.4f}", f"{np.std(finals['A'], ddof=1):.4f}",
                              f"{np.mean(bests['A']):.4f}", f"{np.std(bests['A'], ddof=1):.4f}"]
    assert rows["C"][1:7] == ["1", "0", "0.7000", "-", "0.7000", "-"]


def test_only_seed_and_bookkeeping_keys_group(tmp_path):
    """Reference: the grouping rule of seeds.py, config by config: equal up to run.seed/out_dir/name
    (and bookkeeping such as telemetry.flush_every) groups; a different lr or model.norm does not."""
    base = dict(final=0.5, name="x")
    dirs = [fake_run(tmp_path / "s0", seed=0, **base), fake_run(tmp_path / "s1", seed=1, name="y", final=0.6),
            fake_run(tmp_path / "lr", seed=2, train={"lr": 0.07}, **base),
            fake_run(tmp_path / "norm", seed=3, model={"norm": "group"}, **base),
            fake_run(tmp_path / "ck", seed=4, run={"checkpoint_every": 5}, **base)]
    groups = group_seeds([load_run(d) for d in dirs])
    assert [g.members for g in groups] == [[0, 1, 4], [2], [3]]
    # equal configs under two names: both names; the other two share run.name "x" and are told
    # apart by the key that differs
    assert groups[0].label == "x+y"
    assert groups[1].label.startswith("x [") and "train.lr=0.07" in groups[1].label
    assert "model.norm=group" in groups[2].label


def test_cli_prints_the_seed_table_and_strict_json(seed_grid, capsys):
    """Reference: the per-run final accuracies and numpy's mean/std(ddof=1) of them; strict JSON
    (files.py) writes the undefined std of a one-seed group as null; the table needs 2 distinct seeds."""
    dirs, finals, _ = seed_grid
    assert analyze_main([str(d) for d in dirs]) == 0
    text = capsys.readouterr().out
    assert "mean +- std over seeds" in text
    assert "final test accuracy by global batch" not in text  # one global batch only
    assert analyze_main([str(dirs[0]), str(dirs[0])]) == 0  # two copies of one run are no seed study
    assert "mean +- std over seeds" not in capsys.readouterr().out
    assert analyze_main([str(d) for d in dirs], as_json=True) == 0
    recs = json.loads(capsys.readouterr().out, parse_constant=_reject)
    assert len(recs) == 6 and all("ranks" in r and "final_test_acc" in r for r in recs)  # old keys kept
    g = recs[0]["seed_group"]
    assert g == recs[2]["seed_group"] and g["label"] == "A" and g["runs"] == [str(d) for d in dirs[:3]]
    assert g["final_test_acc_std"] == pytest.approx(np.std(finals["A"], ddof=1))
    assert recs[5]["seed_group"]["n"] == 1 and recs[5]["seed_group"]["final_test_acc_std"] is None


def _sweep(tmp_path):
    """B = 16, 64, 256 (2 ranks x 8, 32, 128) at lr 0.05 (seeds at B=64), the linear scaling rule at
    B=64 and 256 (lr 0.2, 0.8) and a control at B=256 with lr 0.1."""
    acc = {}
    dirs = []

    def add(name, b, lr, final, seed=0):
        d = fake_run(tmp_path / f"{name}_s{seed}", final=final, seed=seed, name=name, train={"batch_size": b, "lr": lr})
        acc[str(d)] = final
        dirs.append(d)

    add("b16", 8, 0.05, 0.90)
    add("b64", 32, 0.05, 0.86)
    add("b64", 32, 0.05, 0.88, seed=1)
    add("b256", 128, 0.05, 0.78)
    add("b64_lin", 32, 0.2, 0.89)
    add("b256_lin", 128, 0.8, 0.84)
    add("b256_lr01", 128, 0.1, 0.81)
    return dirs, acc


def test_accuracy_by_batch_equals_the_per_run_accuracies(tmp_path):
    """Reference: each run's own final test accuracy (run_record), and numpy's mean/std(ddof=1) at the
    one point with two seeds; the series rule of batch.py (constant lr, lr/B constant, one-point)."""
    dirs, acc = _sweep(tmp_path)
    runs = [load_run(d) for d in dirs]
    finals = [run_record(r)["final_test_acc"] for r in runs]
    assert finals == [acc[str(d)] for d in dirs]
    series = {s.label: {p["global_batch"]: p for p in s.points} for s in batch_series(runs)}
    assert list(series) == ["none, lr 0.05", "none, lr 0.05 x B/16", "none, lr 0.1"]
    const, lin, ctrl = series.values()
    assert {b: p["final_test_acc_mean"] for b, p in const.items() if p["n"] == 1} == {16: finals[0], 256: finals[3]}
    assert const[64]["final_test_acc_mean"] == pytest.approx(np.mean(finals[1:3]))
    assert const[64]["final_test_acc_std"] == pytest.approx(np.std(finals[1:3], ddof=1))
    assert {b: p["final_test_acc_mean"] for b, p in lin.items() if b != 16} == {64: finals[4], 256: finals[5]}
    assert lin[16]["runs"] == [str(dirs[0])]  # the anchor run sits on both lines
    assert list(ctrl) == [256] and ctrl[256]["final_test_acc_mean"] == finals[6]
    table = format_batch_table(batch_series(runs)).splitlines()
    assert table[1].split() == ["series", "B=16", "B=64", "B=256"]
    row = {line.rsplit(",", 1)[1].split("  ")[0].strip(): line.rsplit(",", 1)[1] for line in table[2:]}
    assert row["lr 0.05"].split()[2:] == [f"{finals[0]:.4f}", f"{np.mean(finals[1:3]):.4f}+-"
                                          f"{np.std(finals[1:3], ddof=1):.4f}", "(n=2)", f"{finals[3]:.4f}"]
    assert row["lr 0.1"].split()[2:] == ["-", "-", f"{finals[6]:.4f}"]


def test_equal_epoch_sweep_is_one_line_and_clashes_split(tmp_path):
    """Reference: batch.py's rule for steps, by construction: runs whose steps scale with 1/B form one
    line; two runs at one (B, lr) that differ in steps are two lines, never averaged together."""
    dirs = [fake_run(tmp_path / f"b{b}", final=f, name=f"b{b}", train={"batch_size": b, "steps": 4096 // b})
            for b, f in ((8, 0.9), (32, 0.85))]
    series = batch_series([load_run(d) for d in dirs])
    assert [(s.label, [p["global_batch"] for p in s.points]) for s in series] == [("none, lr 0.05", [16, 64])]
    dirs.append(fake_run(tmp_path / "b32_long", final=0.88, name="b32_long", train={"batch_size": 32, "steps": 512}))
    series = batch_series([load_run(d) for d in dirs])
    assert [(s.label, [p["global_batch"] for p in s.points]) for s in series] == [
        ("none [train.steps=512], lr 0.05", [16, 64]), ("none [train.steps=128], lr 0.05", [64])]
    assert not any(p["n"] > 1 for s in series for p in s.points)


def test_png_and_table_only_with_two_batches(tmp_path, capsys):
    """Reference: the rule "at least 2 distinct global batches" of plots.py/batch.py, checked both ways."""
    pytest.importorskip("matplotlib")
    dirs, _ = _sweep(tmp_path / "runs")
    assert analyze_main([str(d) for d in dirs], plots=str(tmp_path / "p2")) == 0
    assert "final test accuracy by global batch" in capsys.readouterr().out
    assert (tmp_path / "p2" / "accuracy_vs_batch.png").stat().st_size > 1000
    one_b = [d for d in dirs if "b64" in d.name]
    assert len(batches(batch_series([load_run(d) for d in one_b]))) == 1
    assert analyze_main([str(d) for d in one_b], plots=str(tmp_path / "p1")) == 0
    assert "final test accuracy by global batch" not in capsys.readouterr().out
    assert (tmp_path / "p1" / "convergence.png").exists() and not (tmp_path / "p1" / "accuracy_vs_batch.png").exists()


def test_runs_with_the_same_seed_count_once(tmp_path):
    """Reference: numpy mean/std(ddof=1) over distinct seeds, equal-seed runs averaged first (jobs/fig3
    has const_b0064 and linear_b0064: one config under two names, so seed 0 of each is one sample)."""
    vals = {("const", 0): 0.70, ("const", 1): 0.74, ("linear", 0): 0.72, ("linear", 1): 0.76, ("const", 2): 0.80}
    dirs = [fake_run(tmp_path / f"{n}{s}", final=v, seed=s, name=n) for (n, s), v in vals.items()]
    runs = [load_run(d) for d in dirs]
    groups = group_seeds(runs)
    assert len(groups) == 1 and groups[0].label == "const+linear"
    summ = summarise(groups, runs, [run_record(r) for r in runs])[0]
    per_seed = [np.mean([0.70, 0.72]), np.mean([0.74, 0.76]), 0.80]
    assert (summ["n"], summ["seeds"], summ["n_runs"]) == (3, [0, 1, 2], 5)
    assert summ["final_test_acc_mean"] == pytest.approx(np.mean(per_seed))
    assert summ["final_test_acc_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert "0,1,2 (5 runs)" in format_seed_groups([summ])
    (point,) = batch_series(runs)[0].points
    assert point["n"] == 3 and point["final_test_acc_std"] == pytest.approx(np.std(per_seed, ddof=1))


def test_a_key_missing_from_an_older_config_counts_as_its_default(tmp_path):
    """A run written before a key existed (its config.toml lacks train.nesterov) groups with a newer
    run at that key's default, and not with one that sets it otherwise."""
    import tomllib

    from lbfl_mpi.config import dump_toml

    dirs = [fake_run(tmp_path / f"s{i}", seed=i, name="x", final=0.5, train=train)
            for i, train in enumerate([{}, {}, {"nesterov": True, "momentum": 0.9}])]
    old = tomllib.loads((dirs[0] / "config.toml").read_text())
    del old["train"]["nesterov"], old["train"]["betas"]
    (dirs[0] / "config.toml").write_text(dump_toml(old))
    dirs.append(fake_run(tmp_path / "s3", seed=3, name="x", final=0.5, train={"momentum": 0.9}))
    groups = group_seeds([load_run(d) for d in dirs])
    assert [g.members for g in groups] == [[0, 1], [2], [3]]
    assert "train.nesterov=True" in groups[1].label and "train.nesterov=False" in groups[2].label
