"""`lbfl analyze DIR` on a directory of run directories (analysis/load.py: find_runs), the error that
names what a directory holds when it holds no run, and the per-run accuracy warning (text and JSON),
on fake run directories."""
import json
import os

import pytest

from lbfl_mpi.analysis import analyze_main
from lbfl_mpi.analysis.load import AnalysisError, find_runs

from ._fake_runs import fake_run


@pytest.fixture
def demo(tmp_path):
    """runs/demo/bsp and runs/demo/fedavg as `make demo` writes them, and a plots folder beside."""
    root = tmp_path / "runs" / "demo"
    bsp, fedavg = fake_run(root / "bsp", final=0.98), fake_run(root / "fedavg", final=0.97)
    (root / "plots").mkdir()
    return root, [bsp, fedavg]


def test_a_directory_of_runs_is_analysed_as_if_each_run_were_given(demo, tmp_path, capsys):
    root, runs = demo
    for kw in ({}, {"as_json": True}):
        assert analyze_main([str(r) for r in runs], **kw) == 0
        given = capsys.readouterr()
        assert analyze_main([str(root)], **kw) == 0
        found = capsys.readouterr()
        assert found.out == given.out and given.err == ""
        assert found.err == (f"lbfl analyze: {root} holds 2 run directories; analysing each: {runs[0]}, "
                             f"{runs[1]}\n")
    assert analyze_main([str(root)], plots=str(tmp_path / "plots")) == 0
    assert (tmp_path / "plots" / "convergence.png").stat().st_size > 1000


def test_find_runs_depth_links_and_a_runs_own_subdirectories(tmp_path):
    top = tmp_path / "top"
    deep = fake_run(top / "a" / "b" / "c", final=0.9)       # 3 levels below: found
    fake_run(top / "a" / "b" / "c2" / "d", final=0.9)        # 4 levels below: not searched
    run = fake_run(top / "r", final=0.9)
    fake_run(run / "checkpoints" / "inner", final=0.9)       # inside a run: not searched
    os.symlink(run, top / "link_to_run")                     # a link to a run counts
    os.symlink(top / "a", top / "link_to_dir")               # a link to a directory is not searched
    assert find_runs(top) == [deep, top / "link_to_run", run]
    assert find_runs(run) == [run]


def test_a_directory_without_runs_is_an_error_naming_what_it_holds(tmp_path):
    (tmp_path / "d" / "plots").mkdir(parents=True)
    (tmp_path / "d" / "config.toml").write_text("")
    with pytest.raises(AnalysisError) as e:
        find_runs(tmp_path / "d")
    assert str(e.value) == (f"{tmp_path / 'd'}: not a run directory (no rank*.h5 files) and no run directory "
                            "within 3 levels below it; it holds config.toml, plots/")
    (tmp_path / "e").mkdir()
    with pytest.raises(AnalysisError, match="; it is empty$"):
        find_runs(tmp_path / "e")
    with pytest.raises(AnalysisError, match=r"not a run directory \(no such file or directory\)$"):
        find_runs(tmp_path / "missing")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(AnalysisError, match=r"not a run directory \(a file, not a directory\)$"):
        find_runs(tmp_path / "f.txt")


def test_analyze_warns_per_run_when_it_ended_near_chance_or_far_below_its_best(tmp_path, capsys):
    bad = fake_run(tmp_path / "bad", final=0.0972, best=0.9139)
    good = fake_run(tmp_path / "good", final=0.95, best=0.96)
    killed = fake_run(tmp_path / "killed", final=0.09, best=0.9, summary=False)  # its last eval is not its end
    assert analyze_main([str(bad), str(good), str(killed)], as_json=True) == 0
    recs = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert recs["bad"]["accuracy_warning"] == ("final test accuracy 0.0972 is near chance (1/10 = 0.1000) and far "
                                               "below the best 0.9139 at step 2: the run diverged after its best "
                                               "evaluation; a smaller train.lr usually fixes it")
    assert recs["good"]["accuracy_warning"] is None and recs["killed"]["accuracy_warning"] is None
    assert analyze_main([str(bad), str(good)]) == 0
    text = capsys.readouterr().out
    assert text.count("WARNING: final test accuracy") == 1
    assert f"   WARNING: {recs['bad']['accuracy_warning']}" in text.split("== good")[0]
