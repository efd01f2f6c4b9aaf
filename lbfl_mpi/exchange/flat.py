"""One flat buffer over a list of tensors, so that each synchronisation is a single collective.

The buffer has one extra trailing slot that carries the rank's aggregation weight, so a weighted
average needs no second collective: every rank sends ``[w_c * x_c ..., w_c]``, and after the sum the
average is ``sum_c w_c x_c / sum_c w_c`` (sample-weighted FedAvg, Eq. 1b; b_c/sum b in BSP).

Optional ``extras`` slots between the body and the weight carry small unweighted statistics that are
summed over ranks by the same collective (the per-layer squared norms of the noise-scale estimate).
"""
from __future__ import annotations

import torch


class FlatBuffer:
    """Flat float32 buffer of ``sum(numel) + extras + 1`` elements on the tensors' device."""

    def __init__(self, tensors: list[torch.Tensor], extras: int = 0):
        if not tensors:
            raise ValueError("FlatBuffer needs at least one tensor")
        self.sizes = [t.numel() for t in tensors]
        self.numel = sum(self.sizes)
        dtype = torch.float32 if all(t.dtype in (torch.float16, torch.bfloat16, torch.float32) for t in tensors) \
            else torch.float64
        self.buf = torch.zeros(self.numel + extras + 1, dtype=dtype, device=tensors[0].device)
        self.body = self.buf[: self.numel]
        self.extras = self.buf[self.numel:self.numel + extras]
        self.views = list(self.body.split(self.sizes))

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def pack_(self, tensors: list[torch.Tensor | None], weight: float = 1.0,
              extras: torch.Tensor | None = None) -> torch.Tensor:
        """buf <- [weight * t for t in tensors] ++ extras ++ [weight]; a None tensor packs as zeros,
        missing extras as zeros."""
        for view, t in zip(self.views, tensors):  # one pass over memory: scale while copying
            if t is None:
                view.zero_()
            elif weight != 1.0:
                torch.mul(t.reshape(-1), weight, out=view)
            else:
                view.copy_(t.reshape(-1))
        if self.extras.numel():
            if extras is None:
                self.extras.zero_()
            else:
                self.extras.copy_(extras.reshape(-1))
        self.buf[-1] = weight
        return self.buf

    def unpack_(self, tensors: list[torch.Tensor], average: bool = True) -> float:
        """tensors <- buf / total weight (when ``average``); returns the total weight."""
        total = float(self.buf[-1].item())
        if average and total <= 0:
            raise RuntimeError(f"weighted average with total weight {total}: no rank contributed samples")
        for view, t in zip(self.views, tensors):  # one pass: divide while copying out
            if average and total != 1.0:
                torch.div(view.view_as(t), total, out=t)
            else:
                t.copy_(view.view_as(t))
        return total
