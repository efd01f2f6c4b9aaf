"""The launch the rank tests run in: MPI_COMM_WORLD, this rank, the world size, and facts every rank
agrees on (computed collectively at import, which every rank reaches at the same point of collection).

Run the rank tests by hand with

    LBFL_RANK_TESTS=1 mpiexec -n N --oversubscribe python -m pytest -q -p no:cacheprovider tests/mpi/ranks
"""
from __future__ import annotations

import torch
from mpi4py import MPI

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()
SIZE = WORLD.Get_size()
# a skip must be decided the same way on every rank: CUDA counts only when every rank has it
CUDA_EVERYWHERE = bool(WORLD.allreduce(torch.cuda.is_available(), op=MPI.LAND))
