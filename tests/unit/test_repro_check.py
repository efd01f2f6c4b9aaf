"""jobs/repro_check.py: where committed summaries are looked up, and how a rerun is compared."""
import importlib.util
import json
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("repro_check", REPO / "jobs" / "repro_check.py")
repro = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repro)


def test_every_check_names_an_existing_config_and_a_seed():
    for name, (config, seed) in repro.CHECKS.items():
        assert (REPO / config).is_file(), name
        assert isinstance(seed, int) and seed >= 0


def test_committed_summary_follows_the_grid_layout(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nout_dir = "runs/t/x"\n')
    (tmp_path / "res" / "t" / "x" / "seed3").mkdir(parents=True)
    (tmp_path / "res" / "t" / "x" / "seed3" / "summary.json").write_text('{"final_test_acc": 0.5}')
    path, summary = repro.committed_summary(cfg, 3, tmp_path / "res")
    assert path == tmp_path / "res" / "t" / "x" / "seed3" / "summary.json" and summary == {"final_test_acc": 0.5}
    with pytest.raises(FileNotFoundError):
        repro.committed_summary(cfg, 4, tmp_path / "res")


def test_compare_accepts_within_the_tolerance_and_nothing_else():
    base = {"outcome": "completed", "steps": 10, "final_test_acc": 0.80, "best_test_acc": 0.85}
    ok = dict(base, final_test_acc=0.809, best_test_acc=0.841)
    assert all(r[3] for r in repro.compare(base, ok, 0.01))
    far = dict(base, final_test_acc=0.7899)
    assert [r[0] for r in repro.compare(base, far, 0.01) if not r[3]] == ["final_test_acc"]
    assert [r[0] for r in repro.compare(base, dict(base, steps=9), 0.01) if not r[3]] == ["steps"]
    assert [r[0] for r in repro.compare(base, dict(base, outcome="nonfinite"), 0.5) if not r[3]] == ["outcome"]
    assert [r[0] for r in repro.compare(base, ok, 0.0) if not r[3]] == ["final_test_acc", "best_test_acc"]
    assert not repro.compare(base, dict(base, final_test_acc=None), 0.5)[2][3]


def test_train_command_takes_the_rank_count_from_the_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nout_dir = "runs/x"\nworld_size = 5\n')
    cmd = repro.train_command(cfg, 2, tmp_path / "o", ["srun", "--mpi=pmix"])
    assert cmd[:4] == ["srun", "-n", "5", "--mpi=pmix"]
    assert cmd[-4:] == ["--set", "run.seed=2", "--set", f"run.out_dir={tmp_path / 'o'}"]


@pytest.mark.parametrize("name", sorted(repro.CHECKS))
def test_a_committed_summary_matches_its_committed_config(name):
    config, seed = repro.CHECKS[name]
    try:
        path, summary = repro.committed_summary(REPO / config, seed)
    except FileNotFoundError:
        pytest.skip(f"{name}: no committed summary yet")
    resolved = tomllib.loads((path.parent / "config.toml").read_text())
    source = tomllib.loads((REPO / config).read_text())
    assert resolved["run"]["seed"] == seed and resolved["run"]["name"] == source["run"]["name"]
    assert summary["outcome"] == "completed" and summary["steps"] == resolved["train"]["steps"]
    assert json.loads(path.read_text()) == summary


def test_a_failed_rerun_is_named_with_lbfls_line_not_the_launchers_banner():
    stderr = ("lbfl: error: data.name='fashion_mnist': no copy found; put it at data.root=/x\n"
              "-------------------------------------------\nprterun detected that one or more processes exited\n")
    assert repro.error_line(stderr) == "lbfl: error: data.name='fashion_mnist': no copy found; put it at data.root=/x"
    assert repro.error_line("Traceback (most recent call last):\n  x\n") == "Traceback (most recent call last):"
    assert repro.error_line("") == "(no output)"


def test_the_verdict_tells_a_failed_rerun_from_a_value_beyond_the_tolerance():
    assert repro.verdict([], []) == "all within tolerance"
    assert repro.verdict(["table1"], []) == "reruns that failed (nothing compared): table1"
    assert repro.verdict(["fig3"], ["table2"]) == ("reruns that failed (nothing compared): fig3; "
                                                   "values beyond the tolerance: table2")
