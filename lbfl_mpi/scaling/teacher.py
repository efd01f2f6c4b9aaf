"""Learned gradient transform A(.) of Tyagi 2025, Eq. 5b: G~ = A(G_large), w <- w - eta G~ (Eq. 5c).

A maps a large-batch gradient to one that looks like a small-batch gradient of the same weights.

Training pairs come for free from the same weights: the local batch is split into m micro-batches of
``scaling.small_batch`` samples, each micro-batch gradient g_j is a small-batch sample, and their mean
is the large-batch gradient G_large (so only memory is added, not FLOPs).

Network: every layer's gradient is cut into chunks of C values and normalised by the layer's RMS of
G_large (so that one network serves all layers and all training phases). A two-layer MLP reads a chunk
of G_large plus a learned embedding of its layer and predicts, per value, the mean and the log-variance
of the matching chunk of g_small. It is trained with the Gaussian negative log-likelihood

    NLL = 1/2 mean( log s^2 + (g_small - mu)^2 / s^2 )        (+ 1/2 log 2 pi, dropped)

on the pairs of the current step, one Adam step per training step, for ``scaling.teacher_steps``
steps at the start and again after each critical phase begins (Eq. 8) or every
``scaling.teacher_refresh`` steps. At use, G~ = scale * (mu + s * eps), eps ~ N(0, I) from a
generator seeded per step, so that BSP ranks, which hold the same teacher, draw the same G~.
"""
from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-12


class GradTeacher(nn.Module):
    """Per-chunk MLP with a layer embedding: G_large chunk -> (mu, log s^2) of the g_small chunk."""

    def __init__(self, n_layers: int, chunk: int = 64, hidden: int = 64, embed: int = 8):
        super().__init__()
        self.chunk = chunk
        self.embed = nn.Embedding(n_layers, embed)
        self.net = nn.Sequential(nn.Linear(chunk + embed, hidden), nn.GELU(), nn.Linear(hidden, 2 * chunk))
        with torch.no_grad():  # start at the identity mapping with unit variance: mu = x, log s^2 = 0
            self.net[2].weight.mul_(0.01)
            self.net[2].bias.zero_()

    def forward(self, x: torch.Tensor, layer_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(torch.cat([x, self.embed(layer_ids)], dim=1))
        mu, logvar = h.split(self.chunk, dim=1)
        return x + mu, logvar.clamp(-12.0, 12.0)


class ChunkLayout:
    """Cuts a list of per-layer gradients into [N, C] chunks (zero-padded per layer) and back."""

    def __init__(self, numels: list[int], chunk: int, device):
        self.numels, self.chunk = numels, chunk
        self.counts = [max(1, math.ceil(n / chunk)) for n in numels]
        self.layer_ids = torch.repeat_interleave(torch.arange(len(numels), device=device),
                                                 torch.tensor(self.counts, device=device))
        mask = []
        for n, c in zip(numels, self.counts):
            m = torch.zeros(c * chunk, dtype=torch.bool, device=device)
            m[:n] = True
            mask.append(m.view(c, chunk))
        self.mask = torch.cat(mask)

    def to_chunks(self, tensors: list[torch.Tensor], scales: torch.Tensor) -> torch.Tensor:
        rows = []
        for t, n, c, s in zip(tensors, self.numels, self.counts, scales):
            flat = torch.zeros(c * self.chunk, dtype=torch.float32, device=t.device)
            flat[:n] = t.reshape(-1).float() / s
            rows.append(flat.view(c, self.chunk))
        return torch.cat(rows)

    def from_chunks(self, chunks: torch.Tensor, scales: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
        out, row = [], 0
        for t, n, c, s in zip(like, self.numels, self.counts, scales):
            out.append((chunks[row:row + c].reshape(-1)[:n] * s).view_as(t).to(t.dtype))
            row += c
        return out


def layer_scales(tensors: list[torch.Tensor]) -> torch.Tensor:
    """RMS of each tensor (float32), floored so an all-zero layer does not divide by zero."""
    return torch.stack([t.detach().float().pow(2).mean().sqrt() for t in tensors]).clamp_min(EPS)


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

    def nll(self, big: list[torch.Tensor], smalls: list[list[torch.Tensor]]) -> torch.Tensor:
        """Mean Gaussian NLL of the small-batch gradients ``smalls`` given ``big`` (all normalised by
        big's per-layer RMS)."""
        scales = layer_scales(big)
        mu, logvar = self.net(self.layout.to_chunks(big, scales), self.layout.layer_ids)
        mask = self.layout.mask
        total = 0.0
        for small in smalls:
            y = self.layout.to_chunks(small, scales)
            total = total + 0.5 * (logvar + (y - mu).pow(2) * torch.exp(-logvar))[mask].mean()
        return total / len(smalls)

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
        mu, logvar = self.net(self.layout.to_chunks(big, scales), self.layout.layer_ids)
        return (self.layout.from_chunks(mu, scales, big),
                self.layout.from_chunks(torch.exp(0.5 * logvar), scales, big))

    @torch.no_grad()
    def sample(self, big: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """G~ = mu + s * eps with eps from a generator seeded by (seed, step)."""
        mu, std = self.predict(big)
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + step)
        return [m + s * torch.randn(m.shape, generator=gen, device=self.device, dtype=m.dtype)
                for m, s in zip(mu, std)]

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "trained_steps": self.trained_steps}

    def load_state_dict(self, d: dict) -> None:
        self.net.load_state_dict(d["net"])
        self.opt.load_state_dict(d["opt"])
        self.trained_steps = int(d["trained_steps"])


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Cosine similarity of two gradients given as lists of tensors (float64 accumulation)."""
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x.double().pow(2).sum()) for x in a))
    nb = math.sqrt(sum(float(y.double().pow(2).sum()) for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else math.nan
