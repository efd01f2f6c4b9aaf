"""jobs/fl_table.py: means over completed seeds only, sample std, runs not completed named apart."""
import json
import statistics
from pathlib import Path

from ._jobs import load_job

fl_table = load_job("fl_table")


def _summary(d: Path, acc: float, outcome: str = "completed") -> None:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"outcome": outcome, "final_test_acc": acc, "best_test_acc": acc,
                                                "wall_time_s": 10.0, "fl_rounds": 5}))


def test_the_table_averages_completed_seeds_and_lists_the_others(tmp_path, capsys):
    _summary(tmp_path / "a" / "seed0", 0.5)
    _summary(tmp_path / "a" / "seed1", 0.7)
    _summary(tmp_path / "a" / "seed2", 0.1, outcome="nonfinite_stop")
    assert fl_table.main([str(tmp_path), "--markdown"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| a |"))
    assert f"| 2 | 0,1 | 0.6000 +- {statistics.stdev([0.5, 0.7]):.4f} |" in row
    assert "not completed: a/seed2: nonfinite_stop (final acc 0.1)" in out
    assert fl_table.main([str(tmp_path / "none")]) == 2
