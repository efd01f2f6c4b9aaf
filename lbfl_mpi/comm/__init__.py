"""The job's ranks: the mpi4py wrapper (world.py: rank, size, local rank, device, control plane) and
the two data planes for tensor collectives, mpi_plane.py (mpi4py buffers) and torch_plane.py
(a torch.distributed process group bootstrapped over MPI), and the MPI watchdog, watchdog.py (a rank
waiting in an MPI call longer than ``dist.timeout_s`` aborts the job)."""
