"""Batch-size models (Eq. 2-3) and heterogeneity-aware dynamic batching."""
