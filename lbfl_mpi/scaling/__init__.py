"""Gradient statistics and transforms of the paper (Eq. 4-8)."""
