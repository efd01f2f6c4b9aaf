"""Wall-clock phase timers; on GPU each phase ends by synchronising the current CUDA stream, so kernels
are counted in the phase that launched them (t_compute is not hidden inside t_sync). Only the current
stream: a gradient bucket's collective still running on NCCL's stream is waited for where the step
waits for it (t_sync), not at the end of backward."""
from __future__ import annotations

import time

import torch


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.times: dict[str, float] = {}
        self._t = 0.0

    def start(self) -> None:
        self.times = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> float:
        """Add the time since the previous lap to ``name`` and return it."""
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        now = time.perf_counter()
        dt = now - self._t
        self.times[name] = self.times.get(name, 0.0) + dt
        self._t = now
        return dt

    def lap_split(self, name: str, **parts: float) -> float:
        """Lap the time since the previous lap, of which ``parts`` (seconds a component measured
        itself, e.g. ``compress=`` of an exchange, ``teacher=`` of the transform) go to their own
        names and the rest to ``name``; returns the whole lap. The parts never exceed the lap."""
        dt = self.lap(name)
        left = dt
        for part, seconds in parts.items():
            seconds = min(max(seconds, 0.0), left)
            left -= seconds
            self.times[part] = self.times.get(part, 0.0) + seconds
            self.times[name] -= seconds
        return dt

    def get(self, name: str) -> float:
        return self.times.get(name, 0.0)
