"""The gradient tensors of a parameter list, as the exchange and the noise injection write them."""
from __future__ import annotations

import torch


def grads_or_zeros_(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each parameter's ``.grad``, created as zeros where a layer got none this step (another rank's
    batch may reach it, and injected noise reaches it anyway)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in params]
