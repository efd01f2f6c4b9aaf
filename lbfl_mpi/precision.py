"""Mixed precision: autocast for the forward/backward pass, and the fp16 loss scaler.

Parameters, gradients, the synchronisation and the error-feedback residuals stay fp32: only the
model's activations and matrix products run in bf16 or fp16 (``torch.autocast``). fp16 needs loss
scaling (Micikevicius et al., "Mixed Precision Training", ICLR 2018): the loss is multiplied by S
before backward and the gradients divided by S afterwards; a step whose gradients are not finite is
skipped and S halved, and S doubles after ``growth_interval`` finite steps in a row (the policy of
``torch.amp.GradScaler``).

Under BSP the finiteness test runs on the synchronised gradient, which is bit-identical on every
rank (a non-finite value on one rank reaches every rank through the sum), so every rank takes the
same skip-or-step decision without an extra collective. Under FedAvg each client decides alone, as
its steps are local anyway.
"""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """The autocast context of ``train.precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


class LossScaler:
    """Dynamic loss scale S for fp16 (state: S and the count of finite steps since the last change)."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, grads: list[torch.Tensor]) -> bool:
        """grads <- grads / S in place; True when every value is finite."""
        grads = [g for g in grads if g is not None]
        if not grads:
            return True
        torch._foreach_mul_(grads, 1.0 / self.scale)
        norms = torch.stack(torch._foreach_norm(grads))  # inf or nan propagate into the norms
        return bool(torch.isfinite(norms).all())

    def update(self, finite: bool) -> None:
        """Halve S after a non-finite step; double it after ``growth_interval`` finite ones."""
        if not finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, d: dict) -> None:
        self.scale, self.good_steps = float(d["scale"]), int(d["good_steps"])
