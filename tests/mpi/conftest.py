"""tests/mpi/ranks holds tests that every rank of an mpiexec launch runs together; they are collected
only where the launch sets LBFL_RANK_TESTS=1 (tests/mpi/test_world_sizes.py does)."""
import os

collect_ignore = [] if os.environ.get("LBFL_RANK_TESTS") == "1" else ["ranks"]
