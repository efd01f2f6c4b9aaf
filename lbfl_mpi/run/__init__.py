"""A run on disk: its directory, checkpoints, and how it stops (signals, agreement, exit codes)."""
