"""The CLI as a user runs it, single process: run-directory protection, resume after SIGKILL, analyze."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ..conftest import kill_after_checkpoint, run_lbfl, tiny_run_args


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    p = run_lbfl(tiny_run_args(out, "sync.period=0"), check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == "lbfl: error: sync.period=0: must be >= 1"
    assert not out.exists()


@pytest.mark.parametrize("bad", ["compress.density=0", "compress.density=1.5", "compress.selection=fancy"])
def test_bad_compression_values_exit_2(tmp_path, bad):
    p = run_lbfl(tiny_run_args(tmp_path / "run", "compress.method=topk", bad), check=False)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and bad.split("=")[0] in p.stderr
    assert not (tmp_path / "run").exists()


def test_run_dir_is_never_silently_overwritten(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out))
    before = (out / "rank0000.h5").stat().st_mtime_ns
    p = run_lbfl(tiny_run_args(out), check=False)
    assert p.returncode == 2 and "already holds a run" in p.stderr and "run.overwrite=true" in p.stderr
    assert (out / "rank0000.h5").stat().st_mtime_ns == before
    p = run_lbfl(tiny_run_args(out, "run.resume=true"), check=False)
    assert p.returncode == 2 and "holds no checkpoint" in p.stderr
    keep = out / "notes.txt"
    keep.write_text("mine")
    run_lbfl(tiny_run_args(out, "run.overwrite=true", "train.steps=6"))
    with h5py.File(out / "rank0000.h5") as f:
        assert f["steps/step"].shape == (6,)
    assert keep.read_text() == "mine"  # only the run's own files are replaced
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_sigkilled_run_resumes_with_identical_losses(tmp_path):
    opts = ["train.steps=40", "run.checkpoint_every=5", "telemetry.flush_every=1", "train.momentum=0.9",
            "train.eval_every=10"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_lbfl(tiny_run_args(full, *opts))
    kill_after_checkpoint(tiny_run_args(part, *opts), part, 15)
    assert not (part / "summary.json").exists()
    run_lbfl(tiny_run_args(part, *opts, "run.resume=true"))
    with h5py.File(full / "rank0000.h5") as a, h5py.File(part / "rank0000.h5") as b:
        np.testing.assert_array_equal(b["steps/step"][:], np.arange(40))
        assert_close(torch.from_numpy(b["steps/loss"][:]), torch.from_numpy(a["steps/loss"][:]), rtol=0, atol=0)
        assert_close(torch.from_numpy(b["eval/test_acc"][:]), torch.from_numpy(a["eval/test_acc"][:]), rtol=0, atol=0)
    p = run_lbfl(tiny_run_args(part, *opts, "run.resume=true", "train.lr=0.5"), check=False)
    assert p.returncode == 2 and "train.lr differ from the run being resumed" in p.stderr
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((part / "summary.json").read_text())
    assert sb["final_test_acc"] == sa["final_test_acc"] and sb["samples"] == sa["samples"]
    assert len(list((part / "checkpoints").glob("step_*"))) == 2


def test_analyze_reports_accuracy_and_mean_times(tmp_path):
    out = tmp_path / "run"
    run_lbfl(tiny_run_args(out, "sync.mode='fedavg'", "sync.period=2"))
    p = run_lbfl(["analyze", str(out), "--json"])
    rec = json.loads(p.stdout)[0]
    summary = json.loads((out / "summary.json").read_text())
    assert rec["final_test_acc"] == summary["final_test_acc"] and rec["best_test_acc"] == summary["best_test_acc"]
    with h5py.File(out / "rank0000.h5") as f:
        for col in ("t_data", "t_compute", "t_sync", "t_step"):
            assert rec["ranks"][0][f"mean_{col}"] == float(np.mean(f["steps"][col][:]))
    text = run_lbfl(["analyze", str(out), str(out), "--plots", str(tmp_path / "plots")]).stdout
    assert "final test acc" in text and "times in ms" in text and " t_compute " in text and " median " in text
    assert (tmp_path / "plots" / "convergence.png").stat().st_size > 1000
    p = run_lbfl(["analyze", str(tmp_path / "nothing")], check=False)
    assert p.returncode == 2 and "not a run directory" in p.stderr


def test_scaling_plots_and_table(tmp_path):
    runs = []
    step = ["scaling.method=step", "scaling.factor=4.0", "scaling.threshold=0.3"]
    for name, extra in (("plain", []), ("step", step)):
        out = tmp_path / name
        run_lbfl(tiny_run_args(out, f"run.name={name}", *extra))
        runs.append(str(out))
    for run in runs:  # summary.json's mean_scale_factor: the mean of the logged factors (U(X) in {1, 4})
        with h5py.File(Path(run) / "rank0000.h5", "r") as f:
            col = f["steps"]["scale_factor"][:]
        got = json.loads((Path(run) / "summary.json").read_text())["mean_scale_factor"]
        assert got == pytest.approx(float(np.mean(col)), rel=1e-12) and set(np.unique(col)) <= {1.0, 4.0}
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["mean_scale_factor"] == 1.0
    p = run_lbfl(["analyze", *runs, "--plots", str(tmp_path / "plots")])
    for png in ("convergence", "grad_change", "scale_factors", "grad_norm_early"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000, png
    table = p.stdout.splitlines()[-3:]
    assert table[0].split()[:5] == ["run", "sync", "scaling", "B", "peak_lr"]
    assert table[1].split()[:5] == ["plain", "bsp", "none", "8", "0.05"]
    assert table[2].split()[:7] == ["step", "bsp", "step", "X=4", "t=0.3", "8", "0.05"]
