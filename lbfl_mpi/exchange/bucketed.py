"""Bucketed gradient allreduce overlapped with backward (dense BSP, ``sync.bucket_mb`` > 0).

The scheme of torch DDP's reducer (Li et al., "PyTorch Distributed", VLDB 2020), over this project's
flat buffer and data planes:

1. the flat buffer is laid out in the order autograd produces the gradients (reverse registration
   order at first; after the first step, the order rank 0 observed, broadcast so every rank keeps
   the same layout) and cut into buckets of about ``bucket_mb`` MiB, followed by one small last
   bucket with the statistics slots and the weight slot;
2. a ``register_post_accumulate_grad_hook`` on every parameter copies its gradient, times the
   rank's weight b_c, into its slot as soon as autograd has accumulated it;
3. a bucket whose gradients have all arrived starts a non-blocking allreduce (MPI_Iallreduce
   through one reused pinned host buffer per bucket, or ``async_op=True`` on a torch backend),
   strictly in bucket order, so every rank issues the same collectives in the same order even when
   some layer gets no gradient on some rank;
4. after backward, ``reduce_`` packs what never arrived (layers without gradients count zero), adds
   the statistics and the weight, starts the remaining buckets and waits for all of them.

The buffer then holds exactly what the one-buffer path's single allreduce gives (tested).
"""
from __future__ import annotations

import torch

from .base import Exchange, Exchanged
from .flat import FlatBuffer
from .link import link_wait


class BucketedExchange(Exchange):
    name = "bucketed"
    overlaps = True

    def __init__(self, comm, params: list[torch.Tensor], extras: int, bucket_mb: float):
        self.comm = comm
        self.params = list(params)
        self.n_extras = extras
        self.bucket_bytes = max(1, int(bucket_mb * 2**20))
        self._layout(list(reversed(range(len(self.params)))))
        self._active = False
        self._observed: list[int] = []
        self._new_order: list[int] | None = None
        self._rebuilt = False
        self.hooks = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)]

    # -------------------------------------------------------------------------------- layout
    def _layout(self, order: list[int]) -> None:
        """Flat buffer over the parameters in ``order``; bucket k = buf[bounds[k]:bounds[k+1]]."""
        self.order = order
        self.flat = FlatBuffer([self.params[i] for i in order], extras=self.n_extras)
        self.slot_of = {i: pos for pos, i in enumerate(order)}
        bounds, bucket_of, filled, start = [0], {}, 0, 0
        esize = self.flat.buf.element_size()
        for pos, i in enumerate(order):
            bucket_of[i] = len(bounds) - 1
            start += self.flat.sizes[pos]
            filled += self.flat.sizes[pos] * esize
            if filled >= self.bucket_bytes or pos == len(order) - 1:
                bounds.append(start)
                filled = 0
        # the last bucket holds only the extras and the weight: every gradient bucket can start during
        # backward, and this small one starts once the statistics are known
        bounds.append(self.flat.buf.numel())
        self.bounds, self.bucket_of = bounds, bucket_of
        self.counts = [0] * (len(bounds) - 1)
        for b in bucket_of.values():
            self.counts[b] += 1

    @property
    def n_buckets(self) -> int:
        return len(self.bounds) - 1

    def _bucket(self, k: int) -> torch.Tensor:
        return self.flat.buf[self.bounds[k]:self.bounds[k + 1]]

    # ------------------------------------------------------------------------------ per step
    def begin_(self, weight: float) -> None:
        if self._new_order is not None:  # after the first step: the observed autograd order
            self._layout(self._new_order)
            self._new_order = None
        self.weight = float(weight)
        self.pending = list(self.counts)
        self.packed = [False] * len(self.params)
        self.works: list = [None] * self.n_buckets
        self.next_bucket = 0
        self._active = True

    def _hook(self, i: int):
        def hook(p: torch.Tensor) -> None:
            if not self._active or self.packed[i] or p.grad is None:
                return
            self._pack_one(i, p.grad)
            if not self._rebuilt:
                self._observed.append(i)
            self._start_ready(last=False)
        return hook

    def _pack_one(self, i: int, grad: torch.Tensor | None) -> None:
        view = self.flat.views[self.slot_of[i]]
        if grad is None:
            view.zero_()
        else:
            torch.mul(grad.reshape(-1), self.weight, out=view)
        self.packed[i] = True
        self.pending[self.bucket_of[i]] -= 1

    def _start_ready(self, last: bool) -> None:
        """Start every bucket, in order, whose gradients are all packed (the last one, statistics and
        weight, only when ``last``)."""
        final = self.n_buckets - 1
        while self.next_bucket < self.n_buckets and self.pending[self.next_bucket] == 0 \
                and (last or self.next_bucket < final):
            k = self.next_bucket
            self.works[k] = self.comm.iallreduce_(self._bucket(k), slot=f"bucket{k}")
            self.next_bucket += 1
        for w in self.works[:self.next_bucket]:  # let MPI progress the outstanding ones
            if w is not None:
                w.test()

    def reduce_(self, sources, weight: float, *, step: int = 0, extras: torch.Tensor | None = None) -> Exchanged:
        if not self._active:  # called without begin_ (e.g. a direct call): nothing was packed yet
            self.begin_(weight)
        for i, t in enumerate(sources):
            if not self.packed[i]:
                self._pack_one(i, t)
        flat = self.flat
        if extras is not None:
            flat.extras.copy_(extras.reshape(-1))
        elif flat.extras.numel():
            flat.extras.zero_()
        flat.buf[-1] = self.weight
        self._start_ready(last=True)
        for w in self.works:
            if w is not None:
                w.wait()
        self._active = False
        if not self._rebuilt:
            self._agree_on_order()
        return Exchanged(bytes_sent=self.nbytes if self.comm.world_size > 1 else 0,
                         t_link=link_wait(self.comm, "allreduce", self.nbytes, calls=self.n_buckets))

    def _agree_on_order(self) -> None:
        """Collective, once: rank 0's observed gradient order (then the rest in reverse registration
        order) becomes every rank's layout from the next step on."""
        seen = set(self._observed)
        mine = self._observed + [i for i in reversed(range(len(self.params))) if i not in seen]
        order = self.comm.bcast_obj(mine, root=0)
        self._rebuilt = True
        if order != self.order:
            self._new_order = order

    def unpack_(self, targets: list[torch.Tensor], average: bool = True) -> float:
        ordered = [targets[i] for i in self.order]
        return self.flat.unpack_(ordered, average=average)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
