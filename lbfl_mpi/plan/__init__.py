"""The offline planner: memory model (Eq. 3), compute model (t_c = alpha + beta b), t_sync, the data
path's t_mov and the Eq. 2 optimum, behind `lbfl plan`."""
