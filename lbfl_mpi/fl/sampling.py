"""Which clients take part in a round, and on which rank each one trains.

Both are pure functions of values every rank shares (run.seed, the round, the clients' sample
counts), so every rank computes the same sample and the same placement without a collective.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

_SAMPLING_STREAM = 0x5A3D  # keeps the round's draw independent of every other seeded stream


def sample_clients(n_clients: int, k: int, round_: int, seed: int, sizes=None, weighted: bool = False) -> list[int]:
    """The K of N clients of round ``round_``, sorted, drawn without replacement from a generator seeded
    by (seed, round): uniformly, or with probability proportional to each client's sample count
    (``weighted``; Li et al. 2020's sampling scheme, without replacement). K = 0 or K = N: all."""
    if k in (0, n_clients):
        return list(range(n_clients))
    rng = np.random.default_rng([seed, _SAMPLING_STREAM, round_])
    p = None
    if weighted:
        s = np.asarray(sizes, dtype=np.float64)
        p = s / s.sum()
    return sorted(int(c) for c in rng.choice(n_clients, size=k, replace=False, p=p))


def place_balanced(clients: list[int], sizes, world_size: int) -> list[list[int]]:
    """Clients per rank, balanced by sample count: largest first (ties by client id), each onto the rank
    with the fewest samples so far (ties by rank), the LPT rule, within 4/3 of the best makespan
    (Graham 1969). Each rank's list is in client order."""
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for c in sorted(clients, key=lambda c: (-int(sizes[c]), c)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[r].append(c)
        load[r] += int(sizes[c])
    return [sorted(o) for o in out]


def place_throughput(clients: list[int], sizes, seconds_per_sample) -> list[list[int]]:
    """Clients per rank by measured speed: largest first (ties by client id), each onto the rank that
    would finish it soonest, (samples so far + the client's) x that rank's seconds per sample (ties by
    rank), the LPT rule for uniformly related machines. A slow rank gets fewer samples; with equal
    speeds this is :func:`place_balanced`."""
    spr = [float(v) for v in seconds_per_sample]
    load = [0] * len(spr)
    out: list[list[int]] = [[] for _ in spr]
    for c in sorted(clients, key=lambda c: (-int(sizes[c]), c)):
        r = min(range(len(spr)), key=lambda r: ((load[r] + int(sizes[c])) * spr[r], r))
        out[r].append(c)
        load[r] += int(sizes[c])
    return [sorted(o) for o in out]


def local_steps(sizes, batch_size: int, epochs: float, period: int) -> list[int]:
    """Each client's local steps a round: tau_i = ceil(E n_i / B) for ``fl.local_epochs`` = E > 0, else
    sync.period for every client."""
    if epochs <= 0:
        return [period] * len(sizes)
    e = Fraction(repr(float(epochs)))  # exact decimal: E = 0.1 of 320 samples at B = 32 is 1 step, not 2
    return [max(1, math.ceil(e * int(n) / batch_size)) for n in sizes]


def client_partition_problem(parts, batch_size: int, cfg) -> str | None:
    """A client with no samples, or fewer than its batch, named with the partition that made it; with
    ``fl.local_epochs``, a client whose tau_i exceeds sync.period, the round's span of steps."""
    how = f"data.partition={cfg.data.partition!r}"
    if cfg.data.partition == "dirichlet":
        how += f" with data.alpha={cfg.data.alpha:g}"
    elif cfg.data.partition == "labels":
        how += f" with data.labels_per_client={cfg.data.labels_per_client}"
    for cid, p in enumerate(parts):
        if len(p) == 0:
            return f"fl.clients={len(parts)}: {how} leaves client {cid} no samples (use more data or fewer clients)"
        if len(p) < batch_size:
            return (f"fl.clients={len(parts)}: {how} leaves client {cid} {len(p)} samples, fewer than "
                    f"train.batch_size={batch_size}")
    taus = local_steps([len(p) for p in parts], batch_size, cfg.fl.local_epochs, cfg.sync.period)
    if max(taus) > cfg.sync.period:
        cid = taus.index(max(taus))
        return (f"fl.local_epochs={cfg.fl.local_epochs:g}: client {cid} ({len(parts[cid])} samples, "
                f"train.batch_size={batch_size}) takes {taus[cid]} local steps a round, more than "
                f"sync.period={cfg.sync.period}: set sync.period to at least {taus[cid]} (the round's span of "
                f"steps; train.steps a multiple of it)")
    return None
