"""Training: a worker per rank (worker.py) hosting its client (client.py), built from a config
(build.py), stepped through named stages (step.py) by the loop (loop.py)."""
from .build import build_worker
from .client import Client
from .loop import train
from .step import run_step
from .worker import Worker

__all__ = ["build_worker", "Client", "train", "run_step", "Worker"]
