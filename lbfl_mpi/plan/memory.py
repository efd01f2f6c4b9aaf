"""Memory model of paper Eq. 3: M_total = M_model + M_grad + M_opt + M_act + M_batch.

What is analytic and what is measured:

- ``M_model``, ``M_grad`` and ``M_opt`` are computed from the parameter tensors (:func:`static_bytes`);
  they do not depend on the batch size ``b``.
- ``M_act`` (tensors autograd keeps for backward) is *counted* at a few probe batch sizes by
  :func:`activation_bytes`: a ``torch.autograd.graph.saved_tensors_hooks`` pack hook sees every tensor
  saved for backward during forward + loss, and the sizes of their distinct storages are summed.
  ``M_batch`` (the input and label tensors) is their ``nbytes``. Both are then *modelled* as lines
  ``intercept + slope * b`` fitted by least squares (:func:`fit_memory`).
- :meth:`MemoryModel.max_batch` inverts the fitted total to give the largest permissible ``b`` for a
  device memory budget.

What this is compared against. On CPU no allocator is read: ``lbfl plan``'s "measured" memory at a
batch is static (analytic) + :func:`activation_bytes` + batch bytes, i.e. the same counted quantities
the fit was made from, so its held-out error checks only that the saved bytes are linear in ``b``
(the 0.00 % reported for ResNet-18 means exactly that), not that the process uses that much memory:
backward temporaries, gradients of intermediate results, intermediates freed during forward,
allocator rounding and caching, and library workspaces are all outside it.

On CUDA an allocator reading exists, and the fit is *calibrated* to it:
:func:`measure_peak_bytes` reads ``torch.cuda.max_memory_allocated`` of one real step at each probe
batch, and the residual (peak minus counted) is fitted as one more line, ``M_other(b)`` (backward
temporaries, workspaces, rounding), which :meth:`MemoryModel.predict` adds to Eq. 3's terms.
:meth:`MemoryModel.max_batch` then also keeps ``ALLOCATOR_HEADROOM`` of the budget free, since a
memory cap counts the caching allocator's reserved blocks, which exceed the allocated peak by block
rounding and fragmentation. (The first GPU check, benchmarks/results/2026-12-04-gpu_check.md, read
the counted terms as 48-98 % short of the allocator. That was the counting pass itself: its pack hook
returned the tensor it was given, which kept every probe's activations allocated, and the peaks were
read on top of them. Measured on fresh copies with nothing counted before, ResNet-18's peak on an
H200 was 150 MiB + 4.57 MiB x b, 2-6 % above the counted terms: enough for a batch planned from the
counted terms alone to exceed its budget.)
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .compute import fit_line

__all__ = [
    "MemoryModel",
    "MemoryProbe",
    "activation_bytes",
    "fit_memory",
    "measure_peak_bytes",
    "static_bytes",
]

_OPT_BUFFERS = {"adam": 2, "adamw": 2, "lamb": 2}
ALLOCATOR_HEADROOM = 0.05  # share of a budget a calibrated plan leaves free (allocator blocks, fragmentation)


@dataclass
class MemoryProbe:
    """Counted ``M_act`` (saved-for-backward storages) and ``M_batch`` (bytes) at one probe batch size,
    and where an allocator was read (CUDA), the peak of one real step at that batch."""

    batch: int
    act_bytes: int
    batch_bytes: int
    peak_bytes: int | None = None


@dataclass
class MemoryModel:
    """Eq. 3 with batch-independent terms from :func:`static_bytes` and linear fits for the rest; when
    calibrated against an allocator, plus the uncounted remainder ``M_other(b)`` and a headroom."""

    model_bytes: int
    grad_bytes: int
    opt_bytes: int
    act_slope: float
    act_intercept: float
    batch_slope: float
    batch_intercept: float
    probes: list[MemoryProbe] = field(default_factory=list)
    other_slope: float = 0.0
    other_intercept: float = 0.0
    headroom: float = 0.0

    @property
    def calibrated(self) -> bool:
        """Whether ``M_other`` was fitted from allocator peaks (CUDA) rather than left at zero."""
        return any(p.peak_bytes is not None for p in self.probes)

    @property
    def static(self) -> int:
        """``M_model + M_grad + M_opt``: the part of Eq. 3 that does not grow with ``b``."""
        return self.model_bytes + self.grad_bytes + self.opt_bytes

    def act(self, b: int) -> float:
        """Modelled ``M_act(b)``."""
        return self.act_intercept + self.act_slope * b

    def batch(self, b: int) -> float:
        """Modelled ``M_batch(b)``."""
        return self.batch_intercept + self.batch_slope * b

    def other(self, b: int) -> float:
        """Modelled uncounted remainder ``M_other(b)`` (workspaces, backward temporaries); 0 uncalibrated."""
        return self.other_intercept + self.other_slope * b

    def counted(self, b: int) -> float:
        """Eq. 3's counted terms alone: ``M_model + M_grad + M_opt + M_act(b) + M_batch(b)``."""
        return self.static + self.act(b) + self.batch(b)

    def predict(self, b: int) -> float:
        """Modelled ``M_total(b)`` in bytes (Eq. 3, plus ``M_other(b)`` when calibrated)."""
        return self.counted(b) + self.other(b)

    def max_batch(self, budget_bytes: float) -> int:
        """Largest ``b >= 0`` with ``predict(b) <= (1 - headroom) * budget_bytes``; 0 when even
        ``b = 0`` does not fit.

        Solved in closed form from the linear fit, then nudged by whole steps so float rounding in
        the division cannot return a batch that does not fit (or miss one that does).
        """
        budget_bytes = (1.0 - self.headroom) * budget_bytes
        if self.predict(0) > budget_bytes:
            return 0
        slope = self.act_slope + self.batch_slope + self.other_slope
        if not slope > 0:
            raise ValueError(f"memory model does not grow with the batch (slope {slope}); no largest batch")
        b = max(0, int(math.floor((budget_bytes - self.predict(0)) / slope)))
        while b > 0 and self.predict(b) > budget_bytes:
            b -= 1
        while self.predict(b + 1) <= budget_bytes:
            b += 1
        return b

    def fit_errors(self) -> list[tuple[int, float]]:
        """``(b, relative error)`` of the modelled ``M_act + M_batch`` against each probe's measurement."""
        out = []
        for p in self.probes:
            measured = p.act_bytes + p.batch_bytes
            predicted = self.act(p.batch) + self.batch(p.batch)
            out.append((p.batch, abs(predicted - measured) / measured if measured else abs(predicted)))
        return out


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def static_bytes(model: nn.Module, optimizer: str, momentum: float = 0.9) -> tuple[int, int, int]:
    """Analytic ``(M_model, M_grad, M_opt)`` in bytes.

    ``M_model`` counts parameters and buffers (BatchNorm statistics live on the device too);
    ``M_grad`` one gradient per trainable parameter; ``M_opt`` the optimizer state per trainable
    parameter: SGD and LARS keep one momentum buffer when ``momentum > 0`` and none otherwise; Adam,
    AdamW and LAMB keep two moment estimates.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    model_b = _tensor_bytes(params) + _tensor_bytes(model.buffers())
    grad_b = _tensor_bytes(trainable)
    name = optimizer.lower()
    if name in ("sgd", "lars"):
        n_buffers = 1 if momentum > 0 else 0
    elif name in _OPT_BUFFERS:
        n_buffers = _OPT_BUFFERS[name]
    else:
        raise ValueError(f"optimizer={optimizer!r} is not modelled; choose one of: adam, adamw, lamb, lars, sgd")
    return model_b, grad_b, n_buffers * grad_b


def _storage_key(t: torch.Tensor) -> tuple[str, int, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr(), s.nbytes())


def activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Counted ``M_act``: bytes of the storages autograd saves for backward in forward + loss (a
    saved-tensors pack hook; no allocator is read, on any device).

    Every tensor passed to the saved-tensor pack hook is reduced to its storage, and each storage is
    counted once, so views and in-place results sharing memory are not double-counted. Storages of
    parameters and buffers (already in ``M_model``) and of ``x`` and ``y`` (already in ``M_batch``)
    are excluded. The model runs in training mode (that is the memory a training step needs); its
    mode and buffers are restored afterwards so probing does not move BatchNorm statistics.
    """
    exclude = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    exclude |= {_storage_key(x), _storage_key(y)}
    seen: dict[tuple[str, int, int], int] = {}

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key not in exclude:
            seen[key] = key[2]
        # detached: a pack hook that returns the tensor it is given makes a reference cycle through
        # autograd (an op's saved output refers to the node that saves it) that Python's collector
        # cannot free, so every probe's activations stayed allocated (on CUDA, gigabytes)
        return t.detach()

    was_training = model.training
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    try:
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), y)
        del loss  # frees the graph; ``seen`` already holds the sizes
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved_buffers):
                b.copy_(s)
        model.train(was_training)
    return int(sum(seen.values()))


def _random_batch(input_shape, num_classes: int, b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(b, *input_shape, device=device)
    y = torch.randint(0, num_classes, (b,), device=device)
    return x, y


def fit_memory(model: nn.Module, input_shape, num_classes: int, optimizer: str, momentum: float, device,
               probe_batches=(1, 2, 4, 8, 16, 32), peak=None) -> MemoryModel:
    """Fit Eq. 3 for ``model`` on ``device``: analytic static terms plus counted (saved-tensor and
    batch bytes), line-fitted ``M_act`` and ``M_batch`` over ``probe_batches``. Moves ``model`` to
    ``device`` (in place).

    Calibration: ``peak(b)`` gives a real step's peak bytes at batch ``b``. By default it is
    :func:`measure_peak_bytes` on a copy of ``model`` when ``device`` is CUDA, and absent elsewhere
    (``peak=False`` turns it off). With it, ``M_other(b)`` is the line fitted to peak minus counted
    bytes at the probes, and the model keeps ``ALLOCATOR_HEADROOM`` of a budget free.
    """
    if not probe_batches or any(int(b) < 1 for b in probe_batches):
        raise ValueError(f"probe_batches must be positive batch sizes, got {probe_batches!r}")
    model.to(device)
    if peak is None and torch.device(device).type == "cuda":
        def peak(b: int) -> int:
            return measure_peak_bytes(copy.deepcopy(model), input_shape, num_classes, b, device, optimizer, momentum)
    probes = []
    for b in probe_batches:
        x, y = _random_batch(input_shape, num_classes, int(b), device)
        probes.append(MemoryProbe(int(b), activation_bytes(model, x, y), int(x.nbytes + y.nbytes)))
        del x, y
        if peak:
            probes[-1].peak_bytes = int(peak(int(b)))
    bs = [p.batch for p in probes]
    act_intercept, act_slope = fit_line(bs, [p.act_bytes for p in probes])
    batch_intercept, batch_slope = fit_line(bs, [p.batch_bytes for p in probes])
    m, g, o = static_bytes(model, optimizer, momentum)
    mm = MemoryModel(m, g, o, act_slope, act_intercept, batch_slope, batch_intercept, probes)
    if peak:
        mm.other_intercept, mm.other_slope = fit_line(bs, [p.peak_bytes - mm.counted(p.batch) for p in probes])
        mm.headroom = ALLOCATOR_HEADROOM
    return mm


def measure_peak_bytes(model: nn.Module, input_shape, num_classes: int, b: int, device,
                       optimizer: str = "sgd", momentum: float = 0.9, lr: float = 0.01) -> int | None:
    """Measured peak CUDA allocation of one forward/backward/optimizer step at batch ``b``: the
    allocator's peak during the step less what was allocated before it, plus the model's own
    parameters and buffers, so tensors other code keeps alive on the device do not count.

    Returns ``None`` on non-CUDA devices, where no allocator peak is available. The step updates
    ``model``'s parameters, so pass a copy when they matter.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    model.to(device)
    model.train()
    name = optimizer.lower()
    if name not in ("sgd", "lars", *_OPT_BUFFERS):
        raise ValueError(f"optimizer={optimizer!r} is not modelled; choose one of: adam, adamw, lamb, lars, sgd")
    from ..config.schema import TrainConfig
    from ..optim import build_optimizer

    opt = build_optimizer(TrainConfig(optimizer=name, lr=lr, momentum=momentum), model.parameters())
    model.zero_grad(set_to_none=True)
    own = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x, y = _random_batch(input_shape, num_classes, b, device)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device)) - before + own
    del opt, x, y
    model.zero_grad(set_to_none=True)
    return peak
