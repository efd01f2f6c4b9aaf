"""Strict JSON (lbfl_mpi/files.py): no NaN/Infinity ever, numpy values made plain, atomic writes that
never follow a planted link."""
import json
import math
import os

import numpy as np
import pytest

from lbfl_mpi.files import dumps_strict, to_jsonable, write_json_atomic


def _reject(name):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_loads(text):
    return json.loads(text, parse_constant=_reject)


NASTY = {
    "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "ok": 1.5,
    "np_nan32": np.float32("nan"), "np_inf64": np.float64("inf"), "np_ok": np.float64(0.25),
    "np_int": np.int64(3), "np_bool": np.bool_(True), "arr": np.array([1.0, np.nan, np.inf, 2.0]),
    "int_arr": np.arange(3, dtype=np.int32), "nested": [{"x": (float("nan"), 2)}, [np.float16("inf")]],
    "none": None, "text": "NaN",
}


def test_to_jsonable_replaces_non_finite_and_numpy_values():
    out = to_jsonable(NASTY)
    assert out["nan"] is None and out["inf"] is None and out["ninf"] is None and out["ok"] == 1.5
    assert out["np_nan32"] is None and out["np_inf64"] is None
    assert out["np_ok"] == 0.25 and type(out["np_ok"]) is float
    assert out["np_int"] == 3 and type(out["np_int"]) is int
    assert out["np_bool"] is True
    assert out["arr"] == [1.0, None, None, 2.0] and out["int_arr"] == [0, 1, 2]
    assert out["nested"] == [{"x": [None, 2]}, [None]]
    assert out["text"] == "NaN"  # strings are data, not numbers


def test_dumps_strict_never_writes_nan_or_infinity():
    for kw in ({}, {"indent": 2}, {"sort_keys": True}):
        text = dumps_strict(NASTY, **kw)
        assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text
        back = strict_loads(text)
        assert back["nan"] is None and back["arr"] == [1.0, None, None, 2.0]
    assert strict_loads(dumps_strict(float("nan"))) is None
    assert strict_loads(dumps_strict(np.array([[np.inf]]))) == [[None]]


def test_write_json_atomic_round_trip_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": float("nan"), "b": [np.float32(1.5)]})
    assert strict_loads(path.read_text()) == {"a": None, "b": [1.5]}
    write_json_atomic(path, {"a": 2}, indent=2)
    assert strict_loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_write_json_atomic_does_not_follow_a_planted_link(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    victim = outside / "precious.txt"
    victim.write_text("keep me")
    path = run / "summary.json"
    planted = [run / "summary.json.tmp", run / ".summary.json.tmp"]
    for link in planted:
        os.symlink(victim, link)
    write_json_atomic(path, {"ok": True})
    assert victim.read_text() == "keep me"
    for link in planted:
        assert link.is_symlink() and os.readlink(link) == str(victim)
    assert strict_loads(path.read_text()) == {"ok": True} and not path.is_symlink()
    # a link at the destination itself is replaced, its target is untouched
    os.replace(run / "summary.json.tmp", path)
    write_json_atomic(path, {"ok": 2})
    assert not path.is_symlink() and victim.read_text() == "keep me"


def test_unserialisable_object_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": {1, 2}})
    assert strict_loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_finite_values_survive_exactly():
    vals = [0.1, -2.5e-300, 1e308, 123456789012345678, True, "x"]
    assert strict_loads(dumps_strict(vals)) == vals
    assert math.isclose(strict_loads(dumps_strict(np.float32(0.1))), float(np.float32(0.1)))
