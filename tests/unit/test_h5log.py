import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lbfl_mpi.telemetry import EVAL_COLUMNS, STEP_COLUMNS, RankLog, open_rank_file, read_group


def _row(step):
    row = {c: step * 0.5 for c in STEP_COLUMNS}
    row.update(step=step, batch_size=8, synced=step % 2, bytes_sent=100 * step)
    return row


def _log(path, **kw):
    return RankLog(path, rank=1, world_size=3, config_json='{"a": 1}', device="cpu", **kw)


def test_round_trip_all_columns(tmp_path):
    path = tmp_path / "rank0001.h5"
    log = _log(path, flush_every=3)
    for s in range(7):
        log.log_step(**_row(s))
    log.log_eval(6, 0.5, 0.75)
    log.close()
    with open_rank_file(path) as f:
        assert dict(f.attrs)["rank"] == 1 and f.attrs["world_size"] == 3 and f.attrs["config_json"] == '{"a": 1}'
        assert {"hostname", "device", "versions", "cpu"} <= set(f.attrs)
        steps = read_group(f, "steps")
        assert set(steps) == set(STEP_COLUMNS)
        assert {len(v) for v in steps.values()} == {7}
        np.testing.assert_array_equal(steps["step"], np.arange(7))
        np.testing.assert_allclose(steps["loss"], np.arange(7) * 0.5)
        np.testing.assert_array_equal(steps["bytes_sent"], np.arange(7) * 100)
        ev = read_group(f, "eval")
        assert set(ev) == set(EVAL_COLUMNS) and ev["test_acc"].tolist() == [0.75]


def test_killed_writer_leaves_readable_file_missing_only_unflushed_rows(tmp_path):
    path = tmp_path / "rank0001.h5"
    code = textwrap.dedent(f"""
        import os, signal
        from tests.unit.test_h5log import _log, _row
        log = _log({str(path)!r}, flush_every=4)
        for s in range(10):
            log.log_step(**_row(s))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True)
    assert p.returncode == -signal.SIGKILL
    with open_rank_file(path) as f:
        steps = read_group(f, "steps")
    np.testing.assert_array_equal(steps["step"], np.arange(8))  # rows 8, 9 were never flushed


def test_resume_keeps_rows_before_the_checkpoint_step(tmp_path):
    path = tmp_path / "rank0001.h5"
    log = _log(path, flush_every=1)
    for s in range(9):
        log.log_step(**_row(s))
    log.log_eval(3, 1.0, 0.1)
    log.log_eval(7, 1.0, 0.2)
    log.flush()
    log.f.close()  # simulate a crash: no orderly close
    log = _log(path, flush_every=1, resume_step=5)
    log.log_step(**_row(5))
    log.close()
    with open_rank_file(path) as f:
        np.testing.assert_array_equal(read_group(f, "steps")["step"], [0, 1, 2, 3, 4, 5])
        assert read_group(f, "eval")["step"].tolist() == [3]


def test_a_reader_opening_the_file_as_it_appears_never_stops_the_writer(tmp_path, monkeypatch):
    """``lbfl analyze`` (or a test polling rows) may open a rank file the instant it appears under its
    name; the writer must not then fail to open it itself (HDF5's file lock: "Resource temporarily
    unavailable", which ended whole jobs). Another process opens the file at the rename and holds it
    while the writer goes on; it then reads the rows flushed later."""
    import lbfl_mpi.telemetry.h5log as h5log

    path = tmp_path / "rank0001.h5"
    reader = textwrap.dedent(f"""
        import sys
        from lbfl_mpi.telemetry import open_rank_file, read_group
        f = open_rank_file({str(path)!r})
        print("open", flush=True)
        sys.stdin.readline()  # the writer flushed its rows
        print(read_group(f, "steps")["step"].tolist(), flush=True)
    """)
    held = []
    real_replace = os.replace

    def replace_then_read(src, dst):
        real_replace(src, dst)
        if os.fspath(dst) == os.fspath(path):
            p = subprocess.Popen([sys.executable, "-c", reader], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            held.append(p)
            assert p.stdout.readline().strip() == "open"

    monkeypatch.setattr(h5log.os, "replace", replace_then_read)
    try:
        log = _log(path, flush_every=2)
        for s in range(4):
            log.log_step(**_row(s))
        log.flush()
        (p,) = held
        out, _ = p.communicate("go\n", timeout=60)
        assert out.strip() == "[0, 1, 2, 3]"
        log.close()
    finally:
        for p in held:
            p.kill()
    with open_rank_file(path) as f:
        np.testing.assert_array_equal(read_group(f, "steps")["step"], np.arange(4))


_X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Example Xeon CPU @ 2.10GHz
flags\t\t: fpu avx2

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Another CPU
"""


@pytest.mark.parametrize("text, model", [
    (_X86_CPUINFO, "Example Xeon CPU @ 2.10GHz"),
    ("processor\t: 0\nBogoMIPS\t: 108.00\n\nModel\t\t: Example Board Rev 1.4\n", "Example Board Rev 1.4"),
])
def test_cpu_attribute_names_model_isa_and_threads(tmp_path, monkeypatch, text, model):
    """The rank file's cpu attribute from a cpuinfo file written here (x86 and ARM layouts): the
    first model line's value, torch's kernel capability and its thread count."""
    import torch

    from lbfl_mpi.telemetry import h5log

    fake = tmp_path / "cpuinfo"
    fake.write_text(text)
    monkeypatch.setattr(h5log, "CPUINFO", fake)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 5)
    path = tmp_path / "rank0001.h5"
    log = _log(path, flush_every=1)
    log.close()
    with open_rank_file(path) as f:
        assert f.attrs["cpu"] == f"{model}, {torch.backends.cpu.get_cpu_capability()}, 5 threads"


def test_cpu_info_without_proc_cpuinfo_falls_back_to_platform(tmp_path, monkeypatch):
    import platform

    import torch

    from lbfl_mpi.telemetry import h5log

    monkeypatch.setattr(h5log, "CPUINFO", tmp_path / "no-cpuinfo-here")
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert h5log.cpu_info() == f"riscv64, {torch.backends.cpu.get_cpu_capability()}, 3 threads"
