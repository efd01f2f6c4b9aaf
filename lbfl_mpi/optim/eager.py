"""An optimizer step without torch's per-call ``torch._dynamo`` import (eager mode only)."""
from __future__ import annotations

import sys

import torch
from torch.optim import optimizer as _torch_optimizer


def skip_dynamo_import() -> None:
    """Let the optimizer's bookkeeping methods run without importing ``torch._dynamo``.

    ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped by
    ``torch._disable_dynamo``, which imports ``torch._dynamo`` on their first call (about 2.4 s of a
    2-core machine's start-up, with sympy) only to mark them "never compile". The trainer runs in eager
    mode and compiles nothing, so the wrapper's cached disabled function is set to the function itself:
    the calls are the same, without the import. Nothing is changed once ``torch._dynamo`` is loaded
    (someone compiles), or where this torch has no such wrapper."""
    if "torch._dynamo" in sys.modules:
        return
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        fn = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = fn


def eager_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` without the per-call ``import torch._dynamo`` of its wrapper.

    torch wraps every optimizer's ``step`` in a function that imports ``torch._dynamo`` to place
    graph breaks (no-ops in eager mode) around the update under ``torch.set_grad_enabled(differentiable)``,
    and in a profiler wrapper that runs the step hooks. Without hooks, and in eager mode, calling the
    unwrapped ``step`` under the same grad mode is the same update (tests/unit/test_optim_eager.py
    compares them bit for bit). Falls back to ``opt.step()`` once ``torch._dynamo`` is loaded, when any
    step hook is registered, when the instance's ``step`` is replaced, or where the wrapper is not the
    one described here."""
    raw = _raw_step(type(opt))
    if raw is None or "step" in vars(opt) or "torch._dynamo" in sys.modules or opt._optimizer_step_pre_hooks \
            or opt._optimizer_step_post_hooks or _torch_optimizer._global_optimizer_pre_hooks \
            or _torch_optimizer._global_optimizer_post_hooks:
        opt.step()
        return
    with torch.set_grad_enabled(bool(opt.defaults.get("differentiable", False))):
        raw(opt)


_RAW_STEPS: dict = {}


def _raw_step(cls):
    """The class's own ``step`` below torch's two wrappers, or None if it is not wrapped that way."""
    if cls not in _RAW_STEPS:
        fn, depth = cls.step, 0
        while hasattr(fn, "__wrapped__") and depth < 3:
            fn, depth = fn.__wrapped__, depth + 1
        own = cls.__dict__.get("step")
        _RAW_STEPS[cls] = fn if own is not None and depth >= 1 and fn.__qualname__ == f"{cls.__name__}.step" \
            else None
    return _RAW_STEPS[cls]
