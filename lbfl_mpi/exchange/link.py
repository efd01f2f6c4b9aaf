"""An emulated federated network: every data-plane exchange also waits for the time a link of
``hetero.link_latency_ms`` and ``hetero.link_gbps`` would take to move the bytes actually sent.

Federated clients sit behind bounded links (the paper's introduction); a 2-core machine or a
cluster's fabric does not. The emulation adds a sleep after each exchange, booked as ``t_link``
inside ``t_sync``, so that Eq. 2's t_sync is the one such a link would give and large batches and
compression pay off where they would. With latency alpha (seconds), bandwidth beta (bytes/s) and p
ranks, the models of the collectives the exchanges make (Thakur, Rabenseifner & Gropp 2005, ring
algorithms):

    ring allreduce of n bytes         t = 2 (p - 1) alpha + 2 (p - 1) / p * n / beta
    ring allgather, m bytes per rank  t = (p - 1) alpha + (p - 1) * m / beta

The allreduce is a reduce-scatter and an allgather of n / p-byte chunks, p - 1 rounds each; the
allgather forwards one rank's m bytes per round. A bucketed exchange makes one allreduce per bucket
(a latency term each); its wait is added once all buckets are in, so it does not overlap with the
backward pass as the real buckets do (an upper bound). With one value per rank the ring runs at its
slowest link: every rank waits with the largest latency and the smallest bandwidth. Control messages
(stop agreement, a few bytes) are not charged; neither is anything on one rank.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass


def ring_allreduce_s(nbytes: float, p: int, latency_s: float, bytes_per_s: float) -> float:
    """2 (p - 1) alpha + 2 (p - 1) / p * n / beta; 0 on one rank."""
    if p <= 1:
        return 0.0
    return 2.0 * (p - 1) * latency_s + 2.0 * (p - 1) / p * nbytes / bytes_per_s


def ring_allgather_s(nbytes_per_rank: float, p: int, latency_s: float, bytes_per_s: float) -> float:
    """(p - 1) alpha + (p - 1) * m / beta; 0 on one rank."""
    if p <= 1:
        return 0.0
    return (p - 1) * latency_s + (p - 1) * nbytes_per_rank / bytes_per_s


@dataclass(frozen=True)
class EmulatedLink:
    """The ring's link: the largest latency and the smallest bandwidth of the ranks' values."""

    latency_s: float
    bytes_per_s: float   # inf: latency only
    world_size: int

    def allreduce_s(self, nbytes: float, calls: int = 1) -> float:
        """``calls`` allreduces moving ``nbytes`` in all (a bucketed exchange: one per bucket)."""
        if self.world_size <= 1 or calls < 1:
            return 0.0
        p = self.world_size
        return ring_allreduce_s(nbytes, p, self.latency_s * calls, self.bytes_per_s)

    def allgather_s(self, nbytes_per_rank: float) -> float:
        return ring_allgather_s(nbytes_per_rank, self.world_size, self.latency_s, self.bytes_per_s)

    @staticmethod
    def wait(seconds: float) -> float:
        """Sleep the modelled time; returns it (the t_link booked)."""
        if seconds > 0:
            time.sleep(seconds)
        return seconds


def build_link(hetero, world_size: int) -> EmulatedLink | None:
    """From ``hetero.link_latency_ms`` and ``hetero.link_gbps`` (empty, one value, or one per rank;
    checked by the config): None when neither is set."""
    lat, gbps = list(hetero.link_latency_ms), list(hetero.link_gbps)
    if not lat and not gbps:
        return None
    latency_s = max(lat) * 1e-3 if lat else 0.0
    bytes_per_s = min(gbps) * 1e9 / 8 if gbps else float("inf")
    return EmulatedLink(latency_s, bytes_per_s, world_size)


def link_wait(comm, kind: str, nbytes: float, calls: int = 1) -> float:
    """The emulated wait after an exchange on ``comm`` (``comm.link``, set by the trainer; none: 0).
    ``kind`` is "allreduce" (``nbytes`` the buffer) or "allgather" (``nbytes`` this rank's payload)."""
    link = getattr(comm, "link", None)
    if link is None or comm.world_size <= 1:
        return 0.0
    t = link.allreduce_s(nbytes, calls) if kind == "allreduce" else link.allgather_s(nbytes)
    return link.wait(t)


@contextmanager
def link_suspended(comm):
    """No emulated wait inside (the evaluation-time model average: measurement, not training)."""
    link = getattr(comm, "link", None)
    if link is None:
        yield
        return
    comm.link = None
    try:
        yield
    finally:
        comm.link = link
