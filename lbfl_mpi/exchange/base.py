"""The exchange interface: how one flat vector is combined across ranks.

Every synchroniser (BSP, FedAvg, post-local) composes one exchange instead of doing its own
collective, the way Horovod passes a compression object into its allreduce
(``horovod/torch/compression.py``) and torch DDP's communication hooks keep a hook's state apart from
its function (``torch/distributed/algorithms/ddp_comm_hooks/``). An exchange holds the state
(buffer, buckets, compression residual); its one operation is

    reduce_(sources, weight)  ->  flat.buf = [ sum_c w_c x^_c ,  sum_c extras_c ,  sum_c w_c ]

where x_c is rank c's vector (a list of tensors packed in order, or one flat tensor) and x^_c is x_c
itself (dense) or what the compressor sends of it (top-k, Eq. 9). ``unpack_`` then writes
sum_c w_c x^_c / sum_c w_c into the caller's tensors: the sample-weighted average (Eq. 1b; b_c / B in
BSP). The extras slots carry small statistics summed with the vector (the noise-scale estimate).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .flat import FlatBuffer
from .link import link_wait


@dataclass
class Exchanged:
    bytes_sent: int                 # payload bytes this rank handed to the data plane
    density: float = 1.0            # fraction of the vector's entries sent
    residual_norm_sq: float = 0.0   # |error-feedback residual|^2 after the exchange (0 without compression)
    t_compress: float = 0.0         # seconds of it spent compressing (selection, scatter); the rest is sync
    t_link: float = 0.0             # seconds of it spent in the emulated link's wait (link.py), inside sync


class Exchange:
    """Base: the flat buffer over ``tensors`` (templates: sizes, dtype, device) plus ``extras`` slots."""

    name = "dense"
    compresses = False   # True: sends an approximation of the vector (FedAvg then exchanges deltas)
    overlaps = False     # True: starts collectives during backward (needs begin_ before it)

    def __init__(self, comm, tensors: list[torch.Tensor], extras: int = 0):
        self.comm = comm
        self.flat = FlatBuffer(list(tensors), extras=extras)

    @property
    def nbytes(self) -> int:
        """Payload of one dense exchange of this buffer."""
        return self.flat.nbytes

    # the buffer's parts, for schemes that work on the reduced vector (sync/)
    @property
    def body(self) -> torch.Tensor:
        """The vector part of the buffer (after a reduce: sum_c w_c x_c)."""
        return self.flat.body

    @property
    def numel(self) -> int:
        """Entries of the vector part."""
        return self.flat.numel

    @property
    def extra_slots(self) -> int:
        return self.flat.extras.numel()

    def total_weight(self) -> float:
        """sum_c w_c after a reduce (the buffer's last slot)."""
        return float(self.flat.buf[-1])

    def broadcast_(self, root: int = 0) -> None:
        """The whole packed buffer from ``root`` to every rank (collective)."""
        self.comm.bcast_(self.flat.buf, root=root)

    def begin_(self, weight: float) -> None:
        """Called before the backward pass of a step whose vector this exchange will reduce."""

    def pack_(self, sources, weight: float, extras: torch.Tensor | None) -> torch.Tensor:
        """buf <- [weight * x, extras, weight]; ``sources`` is a list of tensors or one flat vector."""
        flat = self.flat
        if isinstance(sources, torch.Tensor):
            if weight != 1.0:
                torch.mul(sources.reshape(-1), weight, out=flat.body)
            else:
                flat.body.copy_(sources.reshape(-1))
            if extras is not None:
                flat.extras.copy_(extras.reshape(-1))
            elif flat.extras.numel():
                flat.extras.zero_()
            flat.buf[-1] = weight
            return flat.buf
        return flat.pack_(sources, weight=weight, extras=extras)

    def reduce_(self, sources, weight: float, *, step: int = 0, extras: torch.Tensor | None = None) -> Exchanged:
        """buf <- sum over ranks of [w_c x_c, extras_c, w_c]; reports its own compression time."""
        raise NotImplementedError

    def unpack_(self, targets: list[torch.Tensor], average: bool = True) -> float:
        """targets <- body / total weight (when ``average``); returns the total weight."""
        return self.flat.unpack_(targets, average=average)

    def summed_extras(self) -> torch.Tensor:
        """The extras slots after a reduce (the ranks' statistics summed), as a float64 copy."""
        return self.flat.extras.detach().to(torch.float64).clone()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


class DenseExchange(Exchange):
    """One buffer, one allreduce after backward (large buffers are sliced by the MPI plane)."""

    name = "dense"

    def reduce_(self, sources, weight: float, *, step: int = 0, extras: torch.Tensor | None = None) -> Exchanged:
        self.pack_(sources, weight, extras)
        self.comm.allreduce_(self.flat.buf)
        return Exchanged(bytes_sent=self.nbytes if self.comm.world_size > 1 else 0,
                         t_link=link_wait(self.comm, "allreduce", self.nbytes))

