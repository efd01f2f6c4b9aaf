"""t_sync for `lbfl plan` (Eq. 2) measured by every rank together under mpiexec."""
from __future__ import annotations

import pytest

from ..conftest import SCRIPTS, run_mpi


@pytest.mark.parametrize("backend", ["mpi", "gloo"])
def test_t_sync_is_positive_and_identical_on_every_rank(backend):
    """Reference: the script compares t_sync across ranks for exact equality (allgather) and the payload
    with the closed-form size of each scheme's exchanged fp32 vector (see the script's docstring)."""
    p = run_mpi(2, [str(SCRIPTS / "t_sync_reference.py"), "--backend", backend])
    assert f"t_sync reference OK: world_size=2 backend={backend}" in p.stdout
