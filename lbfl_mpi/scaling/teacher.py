"""Learned gradient transform A(.) of Tyagi 2025, Eq. 5b: G~ = A(G_large), w <- w - eta G~ (Eq. 5c).

A maps a large-batch gradient to one that looks like a small-batch gradient of the same weights
(Eq. 4: G_small = G_large + gamma): G~ = a G + s eps, eps ~ N(0, I), a gain a and a noise s learned
from pairs (G_big, g_small) of gradients of the same weights.

Pairs. In training the local batch is split into m micro-batches of ``scaling.small_batch`` = b_s
samples; each micro-batch gradient g_j is a small-batch sample and their mean is G_local over
b_local = m b_s samples (nested pairs: only memory is added, not FLOPs). Pretraining
(:mod:`.teacher_pretrain`) draws a large batch and an independent small one (independent pairs).

Calibration. By the noise-scale relation (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training", Sec. 2.2 and App. A: the covariance of a b-sample mean gradient is Sigma / b), each
coordinate of a b-sample gradient scatters around the true gradient with variance sigma^2 / b,
sigma^2 the per-sample variance. Hence, per coordinate,

    nested pairs (g_s inside G_big):  E[g_s | G_big] = G_big,  Var(g_s - G_big) = sigma^2 (1/b_s - 1/b_big)
    independent pairs:                                        Var(g_s - G_big) = sigma^2 (1/b_s + 1/b_big)

(nested: g_s - G_big = (1 - b_s/b_big)(g_s - g_rest) with g_rest the mean of the other b_big - b_s
samples; independent: the two variances add, and both are unbiased, so the difference has mean 0
whatever the true gradient). G~ must look like a b_s-sample gradient for the gradient G_B it is
applied to: the b_s-sample gradient g_s inside G_B, for which Eq. 4's gamma = g_s - G_B has variance
sigma^2 (1/b_s - 1/B). B is the batch of the gradient A is *applied* to: under BSP the synchronised
global batch B = sum_c b_c, not the b_local of the training pairs; under FedAvg B = b_local. So the
teacher learns sigma^2, and the caller says which batches a pair and a use have:

    train:  g_s - G_big ~ N(0, sigma_c^2 k_pair),   k_pair = 1/b_s - 1/b_big (nested) or 1/b_s + 1/b_big
    use:    G~ = a G_B + sqrt(sigma_c^2 k_use) eps, k_use = 1/b_s - 1/B   (0 when B <= b_s)

sigma_c^2 = exp(v_c) sigma_l^2 for chunk c of layer l. sigma_l^2 is the per-sample variance of layer
l in gradient units: a bias-corrected EMA (weight ``ema`` of the past) of the moment estimate
mean_j |g_s,j - G_big|_l^2 / (n_l k_pair), unbiased for either kind of pair; under BSP averaged over
ranks, so every rank holds the same value. The network's v_c (0 at the start, so the teacher is
calibrated from its first step) learns how chunks differ from their layer's mean. The injected std is
therefore absolute, not relative to the RMS of the gradient at hand: that RMS falls with the batch
(E|G_b|^2 = |G|^2 + tr(Sigma)/b), so a std relative to the RMS of G_local, reused on G_B, injects
(1/b_s - 1/b_local) |G_B|^2/|G_local|^2 instead of (1/b_s - 1/B) (tests/unit/test_teacher_calibration.py).

Independent pairs need one more step. The prediction that matters, Var(g_s | G_big), is for an
independent g_s sigma^2/b_s + Var(G | G_big): it depends on how well G_big pins down the true
gradient G (a prior on G), so it cannot be read off the pairs; sigma^2 can, from the difference, and
k_use turns it into the nested conditional variance at B. For the same reason the variance is fitted
to the difference g_s - G_big and not to the residual g_s - a G_big: for independent pairs the
likelihood-optimal gain shrinks (a < 1 when noise dominates) and the residual's variance would mix
in |G|^2; for nested pairs a = 1 and the two coincide.

Network: every layer's gradient is cut into chunks of C values and normalised by the layer's RMS of
G_big (so that one network serves all layers and phases; this is only the input scale). A two-layer
MLP reads a chunk plus a learned embedding of its layer and outputs (log a, v) per chunk. Loss, in
units of G_big's layer RMS r_l, with w_c = exp(v_c) sigma_l^2 k_pair / r_l^2 the variance of a value:

    L = 1/2 mean( log w + (y - x)^2 / w + ((y - a x)^2 - (y - x)^2) / sg(w) )

(sg: no gradient). Its value is the Gaussian NLL of y = g_s under N(a x, w) (+ 1/2 log 2 pi, dropped);
its gradient fits w to the difference (first two terms) and a as the NLL does (the last term). One
Adam step per training step, for ``scaling.teacher_steps`` steps at the start (pretraining included)
and again after each critical phase begins (Eq. 8) or every ``scaling.teacher_refresh`` steps. At
use, eps is read from a pre-drawn pool at an offset seeded by the step, so that BSP ranks, which
hold the same teacher, draw the same G~.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..optim import eager_step, skip_dynamo_import
from .noise_scale import layer_sq_norms

EPS = 1e-12
TINY = 1e-30  # floor of a variance in a logarithm (a layer whose gradient is exactly 0)
NOISE_POOL_EXTRA = 1 << 16


def pair_coefficient(b_small: float, b_big: float, nested: bool) -> float:
    """k_pair with Var(g_small - G_big) = sigma^2 k_pair per coordinate (module docstring; variance of
    a b-sample mean = sigma^2 / b, McCandlish et al. 2018): 1/b_s - 1/b_big for a small batch inside
    the big one, 1/b_s + 1/b_big for an independent one."""
    if not (b_small > 0 and b_big > 0) or (nested and b_big <= b_small):
        raise ValueError(f"need 0 < b_small{' < ' if nested else ', 0 < '}b_big, got b_small={b_small}, "
                         f"b_big={b_big}")
    return 1.0 / b_small - 1.0 / b_big if nested else 1.0 / b_small + 1.0 / b_big


def use_coefficient(b_small: float, b_apply: float) -> float:
    """k_use = 1/b_s - 1/B: the variance, in units of sigma^2, that turns a gradient of B samples into
    one of b_s samples (Eq. 4's gamma for the b_s samples inside the B); 0 when B <= b_s."""
    return max(0.0, 1.0 / b_small - 1.0 / b_apply)


class GradTeacher(nn.Module):
    """Per-chunk MLP with a layer embedding: a chunk x of G_big (normalised) -> (log a, v), so that
    g_small on that chunk ~ N(a x, exp(v) sigma_l^2 k) (module docstring).

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
        with torch.no_grad():  # start at a = 1, v = 0: the layer's moment estimate of sigma^2
            self.net[2].weight.mul_(0.01)
            self.net[2].bias.zero_()

    def forward(self, x: torch.Tensor, layer_ids, inv_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a, v), each [N, 1], for chunks ``x`` of the layers ``layer_ids`` (a tensor of [N] ids,
        or one int for chunks of one layer); ``inv_scale`` normalises raw chunks of one layer on the
        fly (W_x (x / rms) = (W_x x) / rms) instead of in a separate pass over x."""
        first = self.net[0]
        w_x, w_e = first.weight[:, :self.chunk], first.weight[:, self.chunk:]
        per_layer = F.linear(self.embed.weight, w_e, first.bias)            # [L, hidden]
        h = F.linear(x, w_x)
        if inv_scale != 1.0:
            h = h * inv_scale
        out = self.net[2](self.net[1](h + per_layer[layer_ids]))
        log_a, v = out.split(1, dim=1)
        return log_a.clamp(-5.0, 5.0), v.clamp(-12.0, 12.0)


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
    """Owns the network, its optimiser, the per-layer per-sample variance and the training schedule;
    see the module docstring. ``b_small``: the target small batch b_s; ``ema``: weight of the past in
    the EMA of sigma_l^2."""

    def __init__(self, numels: list[int], device, chunk: int = 64, hidden: int = 64, lr: float = 1e-3,
                 seed: int = 0, *, b_small: int, ema: float = 0.9):
        if not b_small >= 1 or not 0.0 <= ema < 1.0:
            raise ValueError(f"need b_small >= 1 and 0 <= ema < 1, got b_small={b_small}, ema={ema}")
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # same initial teacher on every rank
        self.net = GradTeacher(len(numels), chunk, hidden).to(device)
        torch.random.set_rng_state(gen_state)
        self.layout = ChunkLayout(numels, chunk, device)
        skip_dynamo_import()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.device = device
        self.seed = seed
        self.b_small, self.ema = b_small, ema
        self.numels = torch.tensor(numels, dtype=torch.float64)
        self.sigma2_sum = torch.zeros(len(numels), dtype=torch.float64)  # EMA of sigma_l^2, not bias-corrected
        self.sigma2_t = 0
        self.trained_steps = 0
        self.pretrained_steps = 0  # of trained_steps, those taken by pretraining (teacher_pretrain.py)
        self._pool = None

    # ------------------------------------------------------------------------- sigma^2
    @property
    def sigma2(self) -> torch.Tensor:
        """Per-layer per-sample variance sigma_l^2 (float64, CPU; gradient units squared): the
        bias-corrected EMA of the moment estimates; 0 before any training pair."""
        if self.sigma2_t == 0:
            return torch.zeros_like(self.sigma2_sum)
        return self.sigma2_sum / (1.0 - self.ema ** self.sigma2_t)

    def _update_sigma2(self, estimate: torch.Tensor) -> None:
        est = estimate.detach().to("cpu", torch.float64).clamp_min(0.0)
        self.sigma2_sum.mul_(self.ema).add_(est, alpha=1.0 - self.ema)
        self.sigma2_t += 1

    # ------------------------------------------------------------------------- training
    def _pair_sums(self, x: torch.Tensor, smalls: list[list[torch.Tensor]], scales: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """In units of big's layer RMS: per chunk D = sum_j |y_j - x|^2 [N, 1] and S = sum_j (y_j - x)
        [N, C] over the small-batch gradients y_j (no graph: x and y are data)."""
        D = torch.zeros(self.layout.rows, 1, device=x.device)
        S = torch.zeros_like(x)
        for small in smalls:
            d = self.layout.to_chunks(small, scales).sub_(x)  # padding is 0 in x and y
            S.add_(d)
            D.add_(d.pow(2).sum(1, keepdim=True))
        return D, S

    def train_step(self, big: list[torch.Tensor], smalls: list[list[torch.Tensor]], b_big: int,
                   nested: bool = True, average_grads=None) -> float:
        """One Adam step on one step's pairs (``big``, each of ``smalls``); returns the NLL (module docstring).

        ``b_big``: the batch of ``big``; ``nested``: the smalls are micro-batches of big's batch
        (else independent of it). ``average_grads(list_of_tensors)`` (BSP) averages tensors over the
        ranks in place: called on this step's sigma_l^2 estimate and on the network's gradients, so
        that every rank keeps the same teacher."""
        k = pair_coefficient(self.b_small, b_big, nested)
        m, lay = len(smalls), self.layout
        with torch.no_grad():
            scales = layer_scales(big)
            x = lay.to_chunks(big, scales)
            D, S = self._pair_sums(x, smalls, scales)
            # moment estimate: sigma_l^2 = mean_j |g_s,j - G_big|_l^2 / (n_l k_pair), in gradient units
            per_layer = torch.zeros(len(lay.numels), dtype=torch.float64, device=x.device)
            per_layer.index_add_(0, lay.layer_ids, D.squeeze(1).double())
            estimate = per_layer * scales.double().pow(2) / (m * self.numels.to(x.device) * k)
            if average_grads is not None:
                average_grads([estimate])
            self._update_sigma2(estimate)
            # the variance of a value, in units of r_l^2, when v = 0
            unit = (self.sigma2.to(x.device) * k / scales.double().pow(2)).clamp_min(TINY).float()
            log_unit = unit.log()[lay.layer_ids].unsqueeze(1)                                  # [N, 1]
            counts = lay.mask.sum(1, keepdim=True)
            xx = x.pow(2).sum(1, keepdim=True)
            xs = (x * S).sum(1, keepdim=True)
        self.net.train()
        self.opt.zero_grad(set_to_none=False)
        log_a, v = self.net(x, lay.layer_ids)
        log_w = v + log_unit
        inv_w = torch.exp(-log_w)
        one_minus_a = 1.0 - torch.exp(log_a)
        # sum_j |y_j - a x|^2 - sum_j |y_j - x|^2 = 2 (1 - a) <x, S> + m (1 - a)^2 |x|^2, per chunk
        extra = 2.0 * one_minus_a * xs + m * one_minus_a.pow(2) * xx
        loss = 0.5 * (m * counts * log_w + D * inv_w + extra * inv_w.detach()).sum() / (m * lay.valid)
        loss.backward()
        if average_grads is not None:
            average_grads([p.grad for p in self.net.parameters()])
        eager_step(self.opt)
        self.trained_steps += 1
        return float(loss.detach())

    # ------------------------------------------------------------------------------ use
    def _noise_coefs(self, b_apply: int) -> list[float]:
        """Per layer sqrt(sigma_l^2 k_use): the std of the injected noise when v = 0, gradient units."""
        return self.sigma2.mul(use_coefficient(self.b_small, b_apply)).sqrt().tolist()

    @torch.no_grad()
    def predict(self, big: list[torch.Tensor], b_apply: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(a G, std of the injected noise) per value, in gradient units, for a gradient ``big`` of
        ``b_apply`` samples."""
        self.net.eval()
        scales = layer_scales(big)
        x = self.layout.to_chunks(big, scales)
        log_a, v = self.net(x, self.layout.layer_ids)
        coefs = torch.tensor(self._noise_coefs(b_apply), dtype=torch.float32, device=x.device)
        std = (torch.exp(0.5 * v) * coefs[self.layout.layer_ids].unsqueeze(1)).expand_as(x)
        return (self.layout.from_chunks(torch.exp(log_a) * x, scales, big),
                self.layout.from_chunks(std, torch.ones_like(scales), big))

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
    def sample_(self, grads: list[torch.Tensor], step: int, b_apply: int, sq_norms: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """G <- G~ = a G + exp(v / 2) sqrt(sigma_l^2 (1/b_s - 1/b_apply)) eps in place, for a gradient
        of ``b_apply`` samples (BSP: the global batch; FedAvg: the local one), layer by layer on the
        gradient's own memory (whole chunks are views; only a layer's last partial chunk is copied);
        returns (|G~_l| / |G_l|, |G~_l|^2) per layer. ``sq_norms`` (per-layer |G_l|^2, if the caller
        has them) saves a pass; the layer RMS only normalises the network's input."""
        self.net.eval()
        if sq_norms is None:
            sq_norms = layer_sq_norms(grads)
        rms = torch.sqrt(sq_norms.double().cpu() / self.numels).clamp_min(EPS).tolist()
        coefs = self._noise_coefs(b_apply)
        C = self.layout.chunk
        noise = self._noise(step).view(-1)
        for li, (g, n, start) in enumerate(zip(grads, self.layout.numels, self.layout.starts)):
            flat = g.view(-1)
            full = (n // C) * C
            parts = [flat[:full].view(-1, C)] if full else []
            tail = None
            if n > full:
                tail = torch.zeros(1, C, dtype=g.dtype, device=g.device)
                tail[0, :n - full] = flat[full:]
                parts.append(tail)
            row0 = 0
            for x in parts:
                log_a, v = self.net(x, li, 1.0 / rms[li])
                eps = noise[start + row0 * C:start + (row0 + x.shape[0]) * C].view(-1, C)
                x.mul_(torch.exp(log_a)).addcmul_(torch.exp(0.5 * v) * coefs[li], eps)
                row0 += x.shape[0]
            if tail is not None:
                flat[full:].copy_(tail[0, :n - full])
        after = layer_sq_norms(grads).cpu()
        return torch.sqrt(after / sq_norms.double().cpu().clamp_min(EPS)), after

    @torch.no_grad()
    def sample(self, big: list[torch.Tensor], step: int, b_apply: int) -> list[torch.Tensor]:
        """G~ for ``big`` (a gradient of ``b_apply`` samples) without touching it."""
        out = [t.detach().clone() for t in big]
        self.sample_(out, step, b_apply)
        return out

    # ---------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "trained_steps": self.trained_steps,
                "pretrained_steps": self.pretrained_steps, "sigma2_sum": self.sigma2_sum.clone(),
                "sigma2_t": self.sigma2_t}

    def load_state_dict(self, d: dict) -> None:
        self.net.load_state_dict(d["net"])
        self.opt.load_state_dict(d["opt"])
        self.trained_steps = int(d["trained_steps"])
        self.pretrained_steps = int(d.get("pretrained_steps", 0))
        # a checkpoint from before the calibration has no sigma^2: no noise until the next training
        self.sigma2_sum = d["sigma2_sum"].clone().to(torch.float64) if "sigma2_sum" in d \
            else torch.zeros_like(self.sigma2_sum)
        self.sigma2_t = int(d.get("sigma2_t", 0))


def cosine(a: list[torch.Tensor], b: list[torch.Tensor], a_sq: float | None = None) -> float:
    """Cosine similarity of two gradients given as lists of tensors (float32 dot products per
    tensor, summed in float64; norms by :func:`layer_sq_norms`); ``a_sq`` = |a|^2 when the caller
    already has it."""
    dot = torch.stack([torch.dot(x.reshape(-1).float(), y.reshape(-1).float()) for x, y in zip(a, b)])
    d, sb = float(dot.double().sum()), float(layer_sq_norms(b).sum())
    sa = float(layer_sq_norms(a).sum()) if a_sq is None else a_sq
    return d / math.sqrt(sa * sb) if sa > 0 and sb > 0 else math.nan
