"""jobs/lars_lamb_report.py: the lr chosen per optimizer, the paired 95 % t interval against SGD and
its verdicts, against values computed by hand from saved runs (summary.json + curve.json)."""
import json
import math
from pathlib import Path

import pytest

from ._jobs import load_job

rep = load_job("lars_lamb_report")


def _run(d: Path, final: float, accs: list[float], loss: float = 0.5, outcome: str = "completed") -> None:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"outcome": outcome, "final_test_acc": final, "steps": 73}))
    (d / "curve.json").write_text(json.dumps({"step": list(range(len(accs))), "test_acc": accs,
                                              "train_loss_end": loss}))


def test_paired_interval_by_hand():
    m, lo, hi = rep.paired_ci([0.7, 0.8, 0.9], [0.6, 0.6, 0.9])
    # differences 0.1, 0.2, 0.0: mean 0.1, sample std 0.1, t(2) = 4.303
    h = 4.303 * 0.1 / math.sqrt(3)
    assert (m, lo, hi) == (pytest.approx(0.1), pytest.approx(0.1 - h), pytest.approx(0.1 + h))
    m, lo, hi = rep.paired_ci([0.7], [0.6])
    assert m == pytest.approx(0.1) and math.isinf(lo) and math.isinf(hi)


def test_tune_choice_edge_note_and_incomplete_runs(tmp_path):
    _run(tmp_path / "tune" / "lars_lr2_b4096", 0.60, [0.5, 0.60])
    _run(tmp_path / "tune" / "lars_lr5_b4096", 0.70, [0.7, 0.70])
    _run(tmp_path / "tune" / "lars_lr10_b4096", 0.65, [0.8, 0.65])
    _run(tmp_path / "tune" / "lars_lr20_b4096", 0.99, [0.99], outcome="nonfinite_stop")
    _run(tmp_path / "tune" / "sgd_lr0.01_b4096", 0.50, [0.5])
    _run(tmp_path / "tune" / "sgd_lr0.02_b4096", 0.55, [0.55])
    lines = rep.tune_table(tmp_path, None)
    assert "| lars | 5 (chosen) | 0.7000 | 0.7000 | 0.5000 |" in lines
    assert "| lars | 10 | 0.6500 | 0.8000 | 0.5000 |" in lines  # best over evaluations, chosen by final
    assert not any("lars | 20" in x for x in lines)  # not completed
    assert "| sgd | 0.02 (chosen) | 0.5500 | 0.5500 | 0.5000 |" in lines
    notes = [x for x in lines if "edge" in x]
    assert notes == ["| sgd | note: the chosen lr is at the edge of the searched range | | | |"]


def test_final_verdicts(tmp_path):
    acc = {("sgd", 4096): [0.80, 0.81, 0.79], ("lars", 4096): [0.85, 0.85, 0.86],
           ("sgd", 8192): [0.70, 0.72, 0.71], ("lars", 8192): [0.69, 0.74, 0.70]}
    for (opt, b), xs in acc.items():
        for s, x in enumerate(xs):
            _run(tmp_path / "final" / f"{opt}_b{b}" / f"seed{s}", x, [x])
    text = "\n".join(rep.final_tables(tmp_path, None))
    # lars - sgd at 4096: 0.05, 0.04, 0.07 -> mean 0.0533, sd 0.01528; interval above 0
    h = 4.303 * 0.015275 / math.sqrt(3)
    assert f"lars better than sgd at B = 4096: +0.0533 [{0.05333 - h:+.4f}, {0.05333 + h:+.4f}], 3 seeds: " \
           "**held**" in text
    # at 8192: -0.01, 0.02, -0.01 -> mean 0.0, interval spans 0
    assert "lars better than sgd at B = 8192: +0.0000" in text
    # drops: sgd 0.10, 0.09, 0.08; lars 0.16, 0.11, 0.16; sgd's minus lars's: -0.06, -0.02, -0.08
    assert "lars loses less than sgd from B = 4096 to 8192 (sgd's drop minus lars's): -0.0533" in text
    # -0.0533 +- 4.303 x 0.0306 / sqrt(3): [-0.129, +0.023], and the 8192 comparison above: both include 0
    assert text.count("**not held** (the interval includes 0: not shown at this number of seeds)") == 2
    assert "| lars | 4096 | 73 | 3 | 0.8533 ± 0.0058 |" in text
    assert "lamb" not in text


def test_verdict_names_the_side_of_zero():
    assert rep.verdict(0.01, 0.2) == "**held**"
    assert rep.verdict(-0.2, -0.01) == "**not held** (the reverse holds: the interval lies below 0)"
    assert rep.verdict(-0.1, 0.1) == "**not held** (the interval includes 0: not shown at this number of seeds)"
