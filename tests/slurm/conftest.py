"""The session's private Slurm (cluster.py): installed with apt-get when missing and the tests run as
root, started once for all tests under tests/slurm and stopped at the end. Where it cannot be
installed or started, every test here is skipped with one line saying why."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from .cluster import PACKAGES, PrivateSlurm, SlurmError, missing


def _install() -> str | None:
    """apt-get install the packages; None on success, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("apt-get") is None:
        return "no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:  # a stale package list: refresh once
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get failed: {e}"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return f"apt-get install {' '.join(PACKAGES)} exited {p.returncode}: {last}"
    return None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("private Slurm: Linux only")
    if os.geteuid() != 0:
        pytest.skip("private Slurm: needs root (SlurmUser=root, slurmd launches the tasks)")
    if missing():
        why = _install()
        if why is not None or missing():
            pytest.skip(f"private Slurm: {', '.join(missing())} missing and not installable ({why})")
    cluster = PrivateSlurm(tmp_path_factory.mktemp("slurm"))
    t0 = time.monotonic()
    try:
        cluster.start()
    except (SlurmError, OSError, subprocess.TimeoutExpired) as e:
        cluster.stop()
        pytest.skip(f"private Slurm did not start: {e}")
    print(f"\nprivate {cluster.version} up in {time.monotonic() - t0:.1f} s at {cluster.root}")
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def _empty_queue(request):
    """After each test that used the cluster, nothing of it runs on: the next test finds the node idle."""
    yield
    if "slurm" in request.fixturenames:
        request.getfixturevalue("slurm").cancel_all()
