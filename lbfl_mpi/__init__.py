"""lbfl_mpi: MPI trainer for federated and large-batch deep learning (Tyagi 2025)."""
__version__ = "0.1.0"
