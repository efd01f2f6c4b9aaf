"""Values that enter lbfl from outside, checked where they enter (config/, config/env.py, data/fits.py,
analysis/load.py, cli.py, data/staging.py): each bad value is one line naming it, exit code 2, and
each good value round-trips. References: tomllib reading back what lbfl wrote, the slice lengths an
allreduce hands to MPI, the bytes a batch occupies, the files as they were.
"""
from __future__ import annotations

import json
import math
import tomllib
import types

import h5py
import numpy as np
import pytest
import torch

from lbfl_mpi.analysis import analyze_main
from lbfl_mpi.analysis.load import AnalysisError, read_config, read_run
from lbfl_mpi.cli import main as cli_main
from lbfl_mpi.comm.mpi_plane import MPIPlane
from lbfl_mpi.config import Config, ConfigError, DataConfig, load_config
from lbfl_mpi.config.env import check_environment
from lbfl_mpi.config.fields import toml_value
from lbfl_mpi.data import DataError, load_dataset
from lbfl_mpi.data.fits import MAX_PASSES, batch_problem, host_memory_bytes
from lbfl_mpi.run.rundir import CONFIG_HEADER, saved_config

from ._fake_runs import fake_run


@pytest.mark.parametrize("name", ["😀 emoji run", "tab\tnew\nline \x1b[31m\x7f\u202e", 'q"uo\\te', "é中"])
def test_any_unicode_run_name_and_out_dir_round_trip_through_config_toml(tmp_path, name):
    out = tmp_path / f"dir {name[:3]}"
    cfg = load_config(None, [f"run.name={toml_value(name)}", f"run.out_dir={toml_value(str(out))}"])
    assert cfg.run.name == name
    out.mkdir()
    (out / "config.toml").write_text(CONFIG_HEADER + cfg.to_toml(), encoding="utf-8")
    assert tomllib.loads((out / "config.toml").read_text(encoding="utf-8")) == cfg.to_dict()
    assert saved_config(out)["run"]["name"] == name  # overwrite and resume=auto can read it back
    assert read_config(out / "config.toml")["run"]["out_dir"] == str(out)  # and analyze


@pytest.mark.parametrize("item,want", [
    ("run.name=caf\udce9", "holds bytes that are not UTF-8 text"),
    ("run.out_dir=runs/\udcff", "holds bytes that are not UTF-8 text"),
    ("run.out_dir=a\0b", "must not contain a NUL character"),
    ("data.root=" + "x" * 256, "has a path component of 256 bytes; file systems allow at most 255"),
    ("run.out_dir=" + "a/" * 2100, "paths must be below 4096"),
    ("data.synthetic_classes=2147483647", "must be <= 1048576"),
    ("run .out_dir=x", "expected section.key=value"),
    ("run.out dir=x", "expected section.key=value"),
])
def test_values_that_no_file_can_hold_are_refused_in_one_line(item, want):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert want in str(e.value) and "\n" not in str(e.value)


def test_set_keys_are_stripped_like_the_grid_script_strips_them():
    assert load_config(None, [" run.out_dir =x"]).run.out_dir == "x"


@pytest.mark.parametrize("name,value,want", [
    ("LBFL_ALLREDUCE_CHUNK_MB", "0.000001", "must be 0 (no slicing) or a number of MiB in"),
    ("LBFL_ALLREDUCE_CHUNK_MB", "nan", "must be 0"),
    ("LBFL_ALLREDUCE_CHUNK_MB", "lots", "expected a number of MiB"),
    ("MASTER_PORT", "abc", "must be a TCP port number"),
    ("MASTER_PORT", "70000", "must be a TCP port number"),
    ("MASTER_ADDR", "host name", "must be a host name or an IP address"),
    ("LBFL_CUDA_AWARE", "maybe", "must be one of 1, 0, true, false, yes, no"),
    ("OMP_NUM_THREADS", "-2", "must be a positive number of threads"),
])
def test_environment_variables_are_checked_like_config_values(name, value, want):
    with pytest.raises(ConfigError) as e:
        check_environment({name: value})
    assert str(e.value).startswith(f"{name}={value!r}: ") and want in str(e.value)


def test_good_environment_values_pass():
    check_environment({"LBFL_ALLREDUCE_CHUNK_MB": "0", "MASTER_PORT": "", "MASTER_ADDR": "10.0.0.1",
                       "LBFL_CUDA_AWARE": "True", "OMP_NUM_THREADS": "4,2"})
    check_environment({"LBFL_ALLREDUCE_CHUNK_MB": "0.5", "MASTER_PORT": "29500", "OMP_NUM_THREADS": "8"})


def test_a_slice_smaller_than_one_element_still_reduces_every_element():
    """LBFL_ALLREDUCE_CHUNK_MB=0.000001 is 1 byte: the slices were empty and nothing was averaged.
    The fake world doubles what it is handed, as a 2-rank sum of equal values would."""
    seen = []

    def allreduce(_, buf):
        seen.append(len(buf))
        buf *= 2

    plane = object.__new__(MPIPlane)
    plane.world, plane.MPI, plane.chunk_bytes, plane.cuda_aware = types.SimpleNamespace(Allreduce=allreduce), \
        types.SimpleNamespace(IN_PLACE=None), 1, False
    plane.watch = types.SimpleNamespace(slot=None, _clock=lambda: 0.0)
    flat = torch.arange(5, dtype=torch.float32)
    plane.allreduce_(flat)
    torch.testing.assert_close(flat, 2 * torch.arange(5, dtype=torch.float32))
    assert seen == [1] * 5


def test_a_batch_is_checked_against_the_partition_and_the_memory_before_anything_runs():
    msg = batch_problem("train.batch_size=2000000000", 2_000_000_000, (1, 8, 8), 64, who="rank 0's")
    assert msg.startswith("train.batch_size=2000000000 is 31250000 passes over rank 0's partition of 64")
    assert batch_problem("b", MAX_PASSES * 64, (1, 8, 8), 64) is None  # the bound itself is allowed
    huge = batch_problem("train.batch_size=16777216", 2**24, (3, 32, 32), 2**30)
    limit = host_memory_bytes()
    assert (huge is not None) == (2**24 * (4 * 3 * 32 * 32 + 16) > limit)
    if huge:
        assert "does not fit in memory" in huge and "206.4 GB" in huge


def test_a_synthetic_set_beyond_memory_is_refused_before_it_is_allocated():
    cfg = DataConfig(name="synthetic", synthetic_classes=1_000_000, synthetic_shape=[3, 224, 224],
                     synthetic_train=8, synthetic_test=8)
    with pytest.raises(DataError, match="the synthetic set takes 602.1 GB"):
        load_dataset(cfg)


@pytest.mark.parametrize("argv,want", [
    (["plan", "--memory-budget", "nan"], "--memory-budget=nan: must be a finite number of GB in (0, 1e6]"),
    (["plan", "--memory-budget", "inf"], "--memory-budget=inf: must be a finite number"),
    (["plan", "--rounds", "100000000"], "--rounds=100000000: must be in [1, 10000]"),
    (["data", "fetch", "cifar10", "--root", "/tmp/x", "--timeout", "-1"], "--timeout=-1.0: must be a number"),
    (["data", "fetch", "cifar10", "--root", "a\0b", "--timeout", "5"], "must not contain a NUL character"),
    (["data", "check", "cifar10", "--root", "x" * 300], "has a path component of 300 bytes"),
])
def test_command_line_numbers_and_paths_are_one_line(argv, want, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err


def test_a_huge_probe_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["plan", "--probes", "1,99999999999"])
    assert e.value.code == 2 and "batch sizes must be in [1, 2147483647]" in capsys.readouterr().err


@pytest.mark.parametrize("line,want", [('name = 5', "run.name: expected str, got 5"),
                                       ('seed = "zero"', "run.seed: expected int, got 'zero'"),
                                       ('preempt_signals = [1]', "run.preempt_signals: expected a list of str")])
def test_analyze_refuses_a_config_with_wrong_types_in_one_line(tmp_path, line, want, capsys):
    run = fake_run(tmp_path / "run", final=0.5, world_size=1)
    text = (run / "config.toml").read_text().replace("[run]\n", f"[run]\n{line}\n", 1)
    (run / "config.toml").write_text("\n".join(ln for ln in text.splitlines()
                                               if ln.split(" = ")[0] != line.split(" = ")[0] or ln == line))
    with pytest.raises(AnalysisError, match=want):
        read_run(run)
    assert analyze_main([str(run)]) == 2 and want in capsys.readouterr().err


def test_a_rank_file_claiming_a_trillion_rows_is_refused_not_allocated(tmp_path, capsys):
    run = fake_run(tmp_path / "run", final=0.5, world_size=1)
    with h5py.File(run / "rank0000.h5", "r+") as f:
        for name in list(f["steps"]):
            del f["steps"][name]
        for name in ("step", "loss"):  # chunked, never written: a few kB on disk, 8 TB when read
            f["steps"].create_dataset(name, shape=(10**12,), dtype="f8", chunks=(1024,))
    with pytest.raises(AnalysisError, match=r"steps/(step|loss) claims 1000000000000 rows"):
        read_run(run)
    assert analyze_main([str(run)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_plots_replace_a_planted_link_instead_of_writing_through_it(tmp_path):
    pytest.importorskip("matplotlib")
    run = fake_run(tmp_path / "run", final=0.5, world_size=1, name="evil\x1b[2J\nlbfl: error: forged")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "convergence.png").symlink_to(victim)
    assert analyze_main([str(run)], plots=str(plots)) == 0
    assert victim.read_text() == "precious"
    png = plots / "convergence.png"
    assert not png.is_symlink() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in plots.iterdir() if p.name.endswith(".tmp")]


def test_analyze_prints_names_and_outcomes_from_files_escaped(tmp_path, capsys):
    run = fake_run(tmp_path / "run", final=0.5, world_size=1, name="evil\x1b[2J\nlbfl: error: forged")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "outcome": "odd\x1b]0;title\x07"}))
    assert analyze_main([str(run), str(run)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\nlbfl: error: forged" not in out
    assert "evil\\x1b[2J\\nlbfl: error: forged" in out and "odd\\x1b]0;title\\x07" in out


def test_config_default_types_are_what_analyze_accepts(tmp_path):
    """The type check of analyze reads the schema: a config lbfl wrote always passes it."""
    (tmp_path / "config.toml").write_text(Config().to_toml())
    assert read_config(tmp_path / "config.toml")["train"]["lr"] == Config().train.lr
    assert math.isfinite(np.float64(Config().train.lr))
