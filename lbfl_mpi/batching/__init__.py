"""What runs during training to choose batch sizes: heterogeneity-aware dynamic batching (dynamic.py).
The offline models (Eq. 2, Eq. 3, the compute model) are in lbfl_mpi/plan/."""
