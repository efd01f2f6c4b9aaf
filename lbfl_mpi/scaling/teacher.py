"""Learned gradient transform A(.) of Tyagi 2025, Eq. 5b: G~ = A(G_large), w <- w - eta G~ (Eq. 5c).

A maps a large-batch gradient to one that looks like a small-batch gradient of the same weights.

Training pairs come for free from the same weights: the local batch is split into m micro-batches of
``scaling.small_batch`` samples, each micro-batch gradient g_j is a small-batch sample, and their mean
is the large-batch gradient G_large (so only memory is added, not FLOPs).

Network: every layer's gradient is cut into chunks of C values and normalised by the layer's RMS of
G_large (so that one network serves all layers and all training phases). A two-layer MLP reads a chunk
of G_large plus a learned embedding of its layer and predicts the mean (a gain a times the chunk) and
the log-variance of the matching chunk of g_small. It is trained with the Gaussian negative log-likelihood

    NLL = 1/2 mean( log s^2 + (g_small - mu)^2 / s^2 )        (+ 1/2 log 2 pi, dropped)

with mu = a x and one gain a and one variance s^2 per chunk (the MLP's two outputs),
on the pairs of the current step, one Adam step per training step, for ``scaling.teacher_steps``
steps at the start and again after each critical phase begins (Eq. 8) or every
``scaling.teacher_refresh`` steps. At use, G~ = scale * (mu + s * eps), eps ~ N(0, I) read from a
pre-drawn pool at an offset seeded by the step, so that BSP ranks, which hold the same teacher, draw
the same G~.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .noise_scale import layer_sq_norms

EPS = 1e-12
NOISE_POOL_EXTRA = 1 << 16


class GradTeacher(nn.Module):
    """Per-chunk MLP with a layer embedding: a chunk x of G_large (normalised) -> (log a, log s^2), so
    that g_small on that chunk ~ N(a x, s^2 I).

    One gain and one variance per chunk keep the cost of using the teacher at a few passes over the
    gradient (a per-value output layer made it 3-4x more expensive; see benchmarks/bench_teacher.py).
    The first layer reads [x, embedding]; it is applied as W_x x + (W_e embedding + b)[layer], so the
    embedding part is computed once per layer instead of once per chunk.
    """

    def __init__(self, n_layers: int, chunk: int = 64, hidden: int = 64, embed: int = 8):
        super().__init__()
        self.chunk = chunk
        self.embed = nn.Embedding(n_layers, embed)
        self.net = nn.Sequential(nn.Linear(chunk + embed, hidden), nn.GELU(), nn.Linear(hidden, 2))
        with torch.no_grad():  # start at a = 1, s^2 = 1 (in units of the layer's RMS)
            self.net[2].weight.mul_(0.01)
            self.net[2].bias.zero_()

    def forward(self, x: torch.Tensor, layer_ids, inv_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a, log s^2), each [N, 1], for chunks ``x`` of the layers ``layer_ids`` (a tensor of
        [N] ids, or one int for chunks of one layer); ``inv_scale`` normalises raw chunks of one layer
        on the fly (W_x (x / rms) = (W_x x) / rms) instead of in a separate pass over x."""
        first = self.net[0]
        w_x, w_e = first.weight[:, :self.chunk], first.weight[:, self.chunk:]
        per_layer = F.linear(self.embed.weight, w_e, first.bias)            # [L, hidden]
        h = F.linear(x, w_x)
        if inv_scale != 1.0:
            h = h * inv_scale
        out = self.net[2](self.net[1](h + per_layer[layer_ids]))
        log_a, logvar = out.split(1, dim=1)
        return log_a.clamp(-5.0, 5.0), logvar.clamp(-12.0, 12.0)


class ChunkLayout:
    """Cuts a list of per-layer gradients into [N, C] chunks (zero-padded per layer) and back."""

    def __init__(self, numels: list[int], chunk: int, device):
        self.numels, self.chunk = numels, chunk
        self.counts = [max(1, math.ceil(n / chunk)) for n in numels]
        self.starts = [sum(self.counts[:i]) * chunk for i in range(len(numels))]
        self.rows = sum(self.counts)
        self.layer_ids = torch.repeat_interleave(torch.arange(len(numels), device=device),
                                                 torch.tensor(self.counts, device=device))
        mask = torch.zeros(self.rows * chunk, device=device)
        for n, s in zip(numels, self.starts):
            mask[s:s + n] = 1.0
        self.mask = mask.view(self.rows, chunk)
        self.valid = int(sum(numels))

    def to_chunks(self, tensors: list[torch.Tensor], scales: torch.Tensor) -> torch.Tensor:
        """[N, C] chunks of ``tensors`` divided by their layer's scale."""
        flat = torch.zeros(self.rows * self.chunk, device=self.mask.device)
        for t, n, s in zip(tensors, self.numels, self.starts):
            flat[s:s + n].copy_(t.reshape(-1))
        chunks = flat.view(self.rows, self.chunk)
        return chunks / scales[self.layer_ids].unsqueeze(1)

    def from_chunks(self, chunks: torch.Tensor, scales: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = (chunks * scales[self.layer_ids].unsqueeze(1)).reshape(-1)
        return [flat[s:s + n].view_as(t).to(t.dtype) for t, n, s in zip(like, self.numels, self.starts)]


def layer_scales(tensors: list[torch.Tensor]) -> torch.Tensor:
    """RMS of each tensor (float32), floored so an all-zero layer does not divide by zero."""
    sq = layer_sq_norms(tensors)
    numels = torch.tensor([t.numel() for t in tensors], dtype=torch.float64).to(sq.device)
    return (sq / numels).sqrt().float().clamp_min(EPS)


class Teacher:
    """Owns the network, its optimiser and the training schedule; see the module docstring."""

    def __init__(self, numels: list[int], device, chunk: int = 64, hidden: int = 64, lr: float = 1e-3,
                 seed: int = 0):
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # same initial teacher on every rank
        self.net = GradTeacher(len(numels), chunk, hidden).to(device)
        torch.random.set_rng_state(gen_state)
        self.layout = ChunkLayout(numels, chunk, device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.device = device
        self.seed = seed
        self.trained_steps = 0
        self._pool = None

    def nll(self, big: list[torch.Tensor], smalls: list[list[torch.Tensor]]) -> torch.Tensor:
        """Mean Gaussian NLL of the small-batch gradients ``smalls`` given ``big`` (all normalised by
        big's per-layer RMS): 1/2 mean(log s^2 + (y - a x)^2 / s^2) over the real (unpadded) values."""
        scales = layer_scales(big)
        x = self.layout.to_chunks(big, scales)
        log_a, logvar = self.net(x, self.layout.layer_ids)
        mu = torch.exp(log_a) * x
        inv_var = torch.exp(-logvar)
        counts = self.layout.mask.sum(1, keepdim=True)
        total = 0.0
        for small in smalls:
            y = self.layout.to_chunks(small, scales)
            sq = ((y - mu).pow(2) * self.layout.mask).sum(1, keepdim=True)  # padding is 0 in x and y
            total = total + 0.5 * (logvar * counts + sq * inv_var).sum()
        return total / (len(smalls) * self.layout.valid)

    def train_step(self, big: list[torch.Tensor], smalls: list[list[torch.Tensor]], average_grads=None) -> float:
        """One Adam step on this step's pairs; ``average_grads(list_of_tensors)`` (BSP) averages the
        teacher's gradients over ranks in place so that every rank keeps the same teacher."""
        self.net.train()
        self.opt.zero_grad(set_to_none=False)
        loss = self.nll(big, smalls)
        loss.backward()
        if average_grads is not None:
            average_grads([p.grad for p in self.net.parameters()])
        self.opt.step()
        self.trained_steps += 1
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, big: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(mean, std) of g_small given ``big``, in gradient units, per layer."""
        self.net.eval()
        scales = layer_scales(big)
        x = self.layout.to_chunks(big, scales)
        log_a, logvar = self.net(x, self.layout.layer_ids)
        std = torch.exp(0.5 * logvar).expand_as(x)
        return (self.layout.from_chunks(torch.exp(log_a) * x, scales, big),
                self.layout.from_chunks(std, scales, big))

    def _noise(self, step: int) -> torch.Tensor:
        """[N, C] standard normal values: a window of a pool drawn once (seeded), at an offset drawn
        from a generator seeded by (seed, step). Every rank gets the same values at the same step;
        drawing N x C fresh normals per step cost about 20 % of a ResNet-18 CPU step."""
        size = self.layout.rows * self.layout.chunk
        if self._pool is None:
            gen = torch.Generator().manual_seed(self.seed * 7919 + 17)
            self._pool = torch.randn(size + NOISE_POOL_EXTRA, generator=gen).to(self.device)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        off = int(torch.randint(0, NOISE_POOL_EXTRA, (1,), generator=gen))
        return self._pool[off:off + size].view(self.layout.rows, self.layout.chunk)

    @torch.no_grad()
    def sample_(self, grads: list[torch.Tensor], step: int, sq_norms: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """G <- G~ = a G + s * rms * eps in place, layer by layer on the gradient's own memory (whole
        chunks are views; only a layer's last partial chunk is copied); returns (|G~_l| / |G_l|,
        |G~_l|^2) per layer. ``sq_norms`` (per-layer |G_l|^2, if the caller has them) saves a pass."""
        self.net.eval()
        if sq_norms is None:
            sq_norms = layer_sq_norms(grads)
        numels = torch.tensor(self.layout.numels, dtype=torch.float64)
        rms = torch.sqrt(sq_norms.double().cpu() / numels).clamp_min(EPS).tolist()
        C = self.layout.chunk
        noise = self._noise(step).view(-1)
        for li, (g, n, start) in enumerate(zip(grads, self.layout.numels, self.layout.starts)):
            flat, r = g.view(-1), rms[li]
            full = (n // C) * C
            parts = [flat[:full].view(-1, C)] if full else []
            tail = None
            if n > full:
                tail = torch.zeros(1, C, dtype=g.dtype, device=g.device)
                tail[0, :n - full] = flat[full:]
                parts.append(tail)
            row0 = 0
            for x in parts:
                log_a, logvar = self.net(x, li, 1.0 / r)
                eps = noise[start + row0 * C:start + (row0 + x.shape[0]) * C].view(-1, C)
                x.mul_(torch.exp(log_a)).addcmul_(torch.exp(0.5 * logvar) * r, eps)
                row0 += x.shape[0]
            if tail is not None:
                flat[full:].copy_(tail[0, :n - full])
        after = layer_sq_norms(grads).cpu()
        return torch.sqrt(after / sq_norms.double().cpu().clamp_min(EPS)), after

    @torch.no_grad()
    def sample(self, big: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """G~ for ``big`` without touching it."""
        out = [t.detach().clone() for t in big]
        self.sample_(out, step)
        return out

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "trained_steps": self.trained_steps}

    def load_state_dict(self, d: dict) -> None:
        self.net.load_state_dict(d["net"])
        self.opt.load_state_dict(d["opt"])
        self.trained_steps = int(d["trained_steps"])


def cosine(a: list[torch.Tensor], b: list[torch.Tensor], a_sq: float | None = None) -> float:
    """Cosine similarity of two gradients given as lists of tensors (float32 dot products per
    tensor, summed in float64; norms by :func:`layer_sq_norms`); ``a_sq`` = |a|^2 when the caller
    already has it."""
    dot = torch.stack([torch.dot(x.reshape(-1).float(), y.reshape(-1).float()) for x, y in zip(a, b)])
    d, sb = float(dot.double().sum()), float(layer_sq_norms(b).sum())
    sa = float(layer_sq_norms(a).sum()) if a_sq is None else a_sq
    return d / math.sqrt(sa * sb) if sa > 0 and sb > 0 else math.nan
