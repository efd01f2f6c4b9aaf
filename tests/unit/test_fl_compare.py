"""jobs/fl_compare.py: the difference of means, Welch's t, the seed-paired difference and its 95 % t
interval, against values computed by hand; a run that did not complete is left out."""
import json
import math
from pathlib import Path

import pytest

from ._jobs import load_job

fl_compare = load_job("fl_compare")


def _summary(d: Path, acc: float, outcome: str = "completed") -> None:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"outcome": outcome, "final_test_acc": acc}))


def test_difference_welch_t_and_paired_difference(tmp_path, capsys):
    for s, (a, b) in enumerate([(0.7, 0.6), (0.8, 0.6), (0.9, 0.9)]):
        _summary(tmp_path / "A" / f"seed{s}", a)
        _summary(tmp_path / "B" / f"seed{s}", b)
    _summary(tmp_path / "A" / "seed3", 0.0, outcome="nonfinite_stop")
    c = fl_compare.compare(fl_compare.final_accs(tmp_path, "A"), fl_compare.final_accs(tmp_path, "B"))
    # A: mean 0.8, var 0.01; B: mean 0.7, var 0.03; paired: 0.1, 0.2, 0.0 (mean 0.1, std 0.1)
    assert c["diff"] == pytest.approx(0.1)
    assert c["welch_t"] == pytest.approx(0.1 / math.sqrt(0.01 / 3 + 0.03 / 3))
    assert (c["paired_mean"], c["paired_std"], c["paired_n"]) == (pytest.approx(0.1), pytest.approx(0.1), 3)
    half = 4.303 * 0.1 / math.sqrt(3)  # t_{0.975, 2} s_d / sqrt(n)
    assert c["paired_ci"] == pytest.approx((0.1 - half, 0.1 + half))
    assert fl_compare.main([str(tmp_path), "A:B"]) == 0
    assert ("A - B: +0.1000 (Welch t +0.87); paired by seed +0.1000 +- 0.1000 (n=3), 95 % CI [-0.1484, +0.3484]"
            in capsys.readouterr().out)


def test_a_pair_without_completed_runs_is_an_error(tmp_path, capsys):
    _summary(tmp_path / "A" / "seed0", 0.5)
    with pytest.raises(SystemExit) as e:
        fl_compare.main([str(tmp_path), "A:missing"])
    assert e.value.code == 2 and "no completed run of missing" in capsys.readouterr().err
