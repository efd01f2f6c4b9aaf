"""Brief pretraining of the teacher A(.) of Tyagi 2025, Eq. 5b, before the first training step.

The paper trains A briefly before using it. Here, literally: at the initial weights w_0, for each of
``scaling.teacher_pretrain_steps`` steps (fresh runs only; a resumed run has the teacher in its
checkpoint)

1. draw a large batch, the batch A will be applied to at step 0: each rank's local batch of b_local
   samples, its gradient computed as the mean of the gradients of its micro-batches of b_s =
   ``scaling.small_batch`` samples (as the training step computes it, so BatchNorm normalises over the
   same batch sizes); under BSP averaged over the W ranks, G_B with B = W b_local; under FedAvg or
   on one rank the local gradient, B = b_local;
2. draw an independent small batch of b_s samples on each rank: its gradient g_s;
3. take one teacher step on the pair (G_B, g_s) with ``nested=False``, ``b_big=B``. The pair is
   independent, so Var(g_s - G_B) = sigma^2 (1/b_s + 1/B) (variance of a b-sample mean = sigma^2/b,
   McCandlish et al. 2018); the teacher learns sigma^2 from it with that coefficient and injects
   sigma^2 (1/b_s - 1/B) at use (:mod:`.teacher`, "Calibration"). Var(g_s | G_B) itself, which for an
   independent g_s depends on how well G_B pins down the true gradient, is never used. Under BSP
   the teacher's gradients and its sigma^2 estimate are averaged over the ranks, as in the training
   step, so every rank keeps the same teacher.

The student is left as it was: no optimizer step, BatchNorm buffers and the torch random state
(dropout) restored, gradients reset, and the batches come from a separately seeded stream over the
rank's own partition (:func:`pretrain_draw`). A run with pretraining therefore consumes the same
training batches as one without and, until the teacher is applied, follows the same trajectory bit
for bit (tests/unit/test_teacher_calibration.py, tests/mpi/test_scaling_runs.py).

With non-IID partitions a rank's small batch comes from its own partition while G_B averages all of
them, so the difference also holds the client drift: the learned sigma^2 then covers what a
b_s-sample gradient of one client adds to G_B, not only the within-client noise.

A pair with a non-finite value on any rank is skipped on every rank (the flag travels in the
large-gradient allreduce) and not counted.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

# added to run.seed for the pretraining stream: above SEED_MAX, so it is never another run's seed
PRETRAIN_SEED_OFFSET = 2**31


def pretrain_draw(loader, seed: int, rank: int, device, to_device=None):
    """``draw(b)`` -> a batch (x, y) of b samples from a stream over the same partition as the training
    ``loader`` (a ClientLoader), seeded apart from it so that pretraining takes nothing from the
    training stream (in-process, no workers); ``to_device(x, y)`` places the batch (the trainer's)."""
    from ..data import ClientLoader

    stream = ClientLoader(loader.dataset, loader.indices, loader.batch_size, seed + PRETRAIN_SEED_OFFSET, rank,
                          0, device=device)

    def draw(b: int):
        stream.batch_size = b
        x, y = stream.next_batch()
        return to_device(x, y) if to_device is not None else (x, y)

    return draw


@contextmanager
def student_unchanged(model: torch.nn.Module):
    """Run the block in train mode, then restore the model's buffers (BatchNorm running statistics,
    batch counters), its parameters' ``.grad``, the torch random state (CPU and the model's GPU) and
    its mode. Parameters are not touched by the block's backward passes; no optimizer steps."""
    params = list(model.parameters())
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [p.grad for p in params]
    cpu_rng = torch.get_rng_state()
    dev = params[0].device if params else torch.device("cpu")
    cuda_rng = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None
    mode = model.training
    for p in params:
        p.grad = None
    model.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in zip(params, grads):
            p.grad = g
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, dev)
        model.train(mode)


def mean_gradient(params: list[torch.Tensor], loss_fn, batches: list, loss_scale: float = 1.0,
                  extra: int = 0) -> torch.Tensor:
    """Flat float32 [n + extra]: the mean over ``batches`` ((x, y) pairs) of the gradients of their
    mean losses ``loss_fn(x, y)``; ``extra`` trailing slots left 0. ``loss_scale`` (fp16) scales the
    losses and is divided out again."""
    for p in params:
        p.grad = None
    for x, y in batches:
        (loss_fn(x, y) * (loss_scale / len(batches))).backward()
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
    dev = parts[0].device
    flat = torch.cat(parts + [torch.zeros(extra, device=dev)])
    for p in params:
        p.grad = None
    if loss_scale != 1.0:
        flat.div_(loss_scale)
    return flat


def pretrain_teacher(teacher, model: torch.nn.Module, params: list[torch.Tensor], loss_fn, draw, steps: int,
                     b_local: int, comm=None, collective: bool = False, average_grads=None,
                     loss_scale: float = 1.0) -> int:
    """Run the module's pretraining for ``steps`` steps; returns how many teacher steps were taken.

    ``draw(b)`` returns a batch (x, y) of b samples from the pretraining stream; ``loss_fn(x, y)``
    the student's mean loss; ``params`` the tensors the teacher's layers are (``teacher.layout``).
    ``collective`` (BSP, several ranks): the large gradient is averaged over ``comm``'s ranks and the
    teacher's updates through ``average_grads``, as :meth:`Teacher.train_step` takes it."""
    b_s = teacher.b_small
    if b_local % b_s or b_local // b_s < 1:
        raise ValueError(f"b_local={b_local} is not a multiple of b_small={b_s}")
    world = comm.world_size if collective else 1
    b_big = b_local * world
    sizes = [p.numel() for p in params]

    def unflat(flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view_as(p) for v, p in zip(flat.split(sizes), params)]

    done = 0
    with student_unchanged(model):
        for _ in range(steps):
            x, y = draw(b_local)
            big = mean_gradient(params, loss_fn, list(zip(x.split(b_s), y.split(b_s))), loss_scale, extra=1)
            small = mean_gradient(params, loss_fn, [draw(b_s)], loss_scale)
            n = big.numel() - 1
            big[n] = 0.0 if bool(torch.isfinite(big[:n]).all() and torch.isfinite(small).all()) else 1.0
            if world > 1:
                comm.allreduce_(big)
                big[:n].div_(world)
            if float(big[n]) > 0:  # some rank saw a non-finite value: every rank skips this pair
                continue
            teacher.train_step(unflat(big[:n]), [unflat(small)], b_big, nested=False,
                               average_grads=average_grads if world > 1 else None)
            teacher.pretrained_steps += 1
            done += 1
    return done
