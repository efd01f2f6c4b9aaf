"""Calibration of the learned teacher A(.) (Tyagi 2025, Eq. 5b) to the batch it is applied to, and its
pretraining (scaling/teacher.py, scaling/teacher_pretrain.py).

Reference for every expected value: the noise-scale relation (McCandlish et al. 2018, "An Empirical
Model of Large-Batch Training", Sec. 2.2 / App. A): a b-sample mean gradient scatters per coordinate
with variance sigma^2 / b around the true gradient. Synthetic per-sample gradients g_i = mu + sigma_l xi_i
(fixed mu, known sigma_l per layer) make sigma^2 known, so the variance the teacher injects into G_B,
G~ - a G_B, must be sigma_l^2 (1/b_s - 1/B): the spread of a b_s-sample gradient inside the B samples.
"""
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.scaling.teacher import Teacher, pair_coefficient, use_coefficient
from lbfl_mpi.scaling.teacher_pretrain import pretrain_draw, pretrain_teacher

NS = [256, 320, 192]                # "layers"
SIGMA = torch.tensor([0.5, 1.0, 2.0])  # per-coordinate per-sample std of each layer
B_S, B_LOCAL = 4, 8                 # small batch and local batch (2 micro-batches, the trainer's minimum)


class Samples:
    """Per-sample gradients g_i = mu + sigma_l xi_i of each layer, from one seeded generator."""

    def __init__(self, seed: int, mu_scale: float = 0.1):
        self.gen = torch.Generator().manual_seed(seed)
        self.mu = [mu_scale * s * torch.randn(n, generator=self.gen) for n, s in zip(NS, SIGMA.tolist())]

    def draw(self, b: int) -> list[torch.Tensor]:
        """[b, n_l] per-sample gradients of each layer."""
        return [m + s * torch.randn(b, n, generator=self.gen) for m, n, s in zip(self.mu, NS, SIGMA.tolist())]


def mean(samples: list[torch.Tensor]) -> list[torch.Tensor]:
    return [s.mean(0) for s in samples]


def train_nested(teacher: Teacher, data: Samples, steps: int) -> None:
    """The trainer's pairs: the local batch's gradient and its micro-batches of b_s inside it."""
    for _ in range(steps):
        local = data.draw(B_LOCAL)
        smalls = [mean([s[j:j + B_S] for s in local]) for j in range(0, B_LOCAL, B_S)]
        teacher.train_step(mean(local), smalls, B_LOCAL, nested=True)


def injected_variance(teacher: Teacher, data: Samples, b_apply: int, draws: int = 60) -> torch.Tensor:
    """Per layer: the mean over draws and coordinates of (G~ - a G_B)^2, G_B the mean of b_apply fresh
    samples, a G_B the teacher's mean part (Eq. 5b: G~ = a G_B + noise)."""
    acc = torch.zeros(len(NS), dtype=torch.float64)
    for k in range(draws):
        big = mean(data.draw(b_apply))
        mu, _ = teacher.predict(big, b_apply)
        out = teacher.sample(big, step=k, b_apply=b_apply)
        acc += torch.stack([(o - m).double().pow(2).mean() for o, m in zip(out, mu)])
    return acc / draws


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b).max())


def test_pair_coefficients_match_monte_carlo_pairs():
    """McCandlish et al. 2018 (variance sigma^2 / b): nested Var(g_s - G_big) = sigma^2 (1/b_s - 1/b_big),
    independent sigma^2 (1/b_s + 1/b_big), checked on literal per-sample gradients."""
    data = Samples(0, mu_scale=1.0)
    nested, indep = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for _ in range(200):
        big = data.draw(16)
        G, g_in, g_out = mean(big), mean([s[:4] for s in big]), mean(data.draw(4))
        nested += torch.stack([(a - b).double().pow(2).mean() for a, b in zip(g_in, G)]) / 200
        indep += torch.stack([(a - b).double().pow(2).mean() for a, b in zip(g_out, G)]) / 200
    s2 = SIGMA.double() ** 2
    assert_close(nested, s2 * pair_coefficient(4, 16, nested=True), rtol=0.06, atol=0)
    assert_close(indep, s2 * pair_coefficient(4, 16, nested=False), rtol=0.06, atol=0)
    assert use_coefficient(4, 16) == pair_coefficient(4, 16, nested=True) and use_coefficient(4, 4) == 0.0


@pytest.mark.parametrize("k", [4, 1], ids=["bsp_global_batch", "fedavg_local_batch"])
def test_nested_pairs_calibrate_to_the_batch_the_teacher_is_applied_to(k):
    """Tyagi 2025 Eq. 4/5b with the noise-scale relation (McCandlish et al. 2018): trained on nested pairs
    (b_local, micro-batches of b_s), applied to the mean of B = k b_local samples (BSP: the global batch,
    k = world size; FedAvg: B = b_local), the injected variance is sigma^2 (1/b_s - 1/B) per coordinate."""
    torch.manual_seed(0)
    data = Samples(1)
    teacher = Teacher(NS, "cpu", chunk=32, hidden=16, seed=0, b_small=B_S)
    train_nested(teacher, data, steps=80)
    B = k * B_LOCAL
    got = injected_variance(teacher, data, B)
    s2 = SIGMA.double() ** 2
    want = s2 * (1 / B_S - 1 / B)
    assert_close(got, want, rtol=0.1, atol=0)
    # the sigma^2 the teacher holds is the per-sample variance itself (gradient units)
    assert_close(teacher.sigma2, s2, rtol=0.05, atol=0)
    if k > 1:
        # the uncalibrated teacher fails: the pairs' own variance, sigma^2 (1/b_s - 1/b_local), is 43 % low,
        # and the old std relative to the RMS of the gradient at hand, s^2 |G_B|^2 / |G_local|^2 with
        # s^2 |G_local|^2 = sigma^2 (1/b_s - 1/b_local), lower still (E|G_b|^2 = |mu|^2 + sigma^2 / b)
        pairs = s2 * (1 / B_S - 1 / B_LOCAL)
        mu2 = torch.stack([m.double().pow(2).mean() for m in data.mu])
        relative = pairs * (mu2 + s2 / B) / (mu2 + s2 / B_LOCAL)
        for wrong in (pairs, relative):
            assert rel_err(wrong, want) > 0.4
            with pytest.raises(AssertionError):
                assert_close(got, wrong, rtol=0.1, atol=0)


def test_independent_pretraining_pairs_calibrate_to_the_applied_batch():
    """Tyagi 2025 Eq. 5b pretraining pairs with the noise-scale relation (McCandlish et al. 2018): a large
    batch of B samples and an independent small one of b_s give Var(g_s - G_B) = sigma^2 (1/b_s + 1/B);
    the teacher still injects sigma^2 (1/b_s - 1/B), not the pairs' difference variance."""
    torch.manual_seed(0)
    data = Samples(2)
    teacher = Teacher(NS, "cpu", chunk=32, hidden=16, seed=0, b_small=B_S)
    B = 4 * B_LOCAL
    for _ in range(80):
        teacher.train_step(mean(data.draw(B)), [mean(data.draw(B_S))], B, nested=False)
    got = injected_variance(teacher, data, B)
    s2 = SIGMA.double() ** 2
    want = s2 * (1 / B_S - 1 / B)
    assert_close(got, want, rtol=0.1, atol=0)
    # treating the pairs as the target (injecting Var(g_s - G_B)) would be 29 % high
    wrong = s2 * (1 / B_S + 1 / B)
    assert rel_err(wrong, want) > 0.25
    with pytest.raises(AssertionError):
        assert_close(got, wrong, rtol=0.1, atol=0)


def test_teacher_state_round_trips_with_its_variance():
    """Checkpoint contract (docs/run-dir.md, "Checkpoint and resume"): a loaded teacher injects the same G~ (Eq. 5b)."""
    data = Samples(3)
    a = Teacher(NS, "cpu", chunk=32, hidden=16, seed=0, b_small=B_S)
    train_nested(a, data, steps=5)
    b = Teacher(NS, "cpu", chunk=32, hidden=16, seed=0, b_small=B_S)
    b.load_state_dict(a.state_dict())
    big = mean(data.draw(32))
    for x, y in zip(a.sample(big, 3, 32), b.sample(big, 3, 32)):
        assert torch.equal(x, y)
    assert b.trained_steps == 5 and b.sigma2_t == 5


def _student():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))


def test_pretraining_leaves_the_student_and_its_stream_unchanged_and_trains_the_teacher():
    """Tyagi 2025 Eq. 5b "brief pretraining" (scaling/teacher_pretrain.py): the teacher takes one step per
    pretraining step, while the student's weights, BatchNorm statistics, gradients, RNG state and training
    batches are those it would have without pretraining."""
    from lbfl_mpi.data import ClientLoader
    from lbfl_mpi.data.datasets import TensorData

    gen = torch.Generator().manual_seed(5)
    data = TensorData(torch.randn(200, 6, generator=gen), torch.randint(0, 3, (200,), generator=gen))
    loader = ClientLoader(data, torch.arange(100).numpy(), B_LOCAL, seed=0, rank=0)
    reference = ClientLoader(data, torch.arange(100).numpy(), B_LOCAL, seed=0, rank=0)
    model = _student()
    model.train()
    params = list(model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = Teacher([p.numel() for p in params], "cpu", chunk=16, hidden=8, seed=0, b_small=2)
    before = [p.detach().clone() for p in teacher.net.parameters()]
    rng = torch.get_rng_state()
    draw = pretrain_draw(loader, seed=0, rank=0, device=None)

    def loss_fn(x, y):
        return torch.nn.functional.cross_entropy(model(x), y)

    done = pretrain_teacher(teacher, model, params, loss_fn, draw, steps=4, b_local=B_LOCAL)
    assert done == 4 and teacher.trained_steps == 4 and teacher.pretrained_steps == 4
    assert any(not torch.equal(p, q) for p, q in zip(teacher.net.parameters(), before))
    assert (teacher.sigma2 > 0).all()
    after = model.state_dict()
    for k, v in state.items():  # weights and BatchNorm running_mean/var/num_batches_tracked
        assert torch.equal(after[k], v), k
    assert all(p.grad is None for p in params) and model.training
    assert torch.equal(torch.get_rng_state(), rng)  # dropout draws of the first step are unchanged
    # the training stream was not consumed: it yields what an untouched loader yields
    assert loader.state_dict() == reference.state_dict()
    for (x1, y1), (x2, y2) in zip((loader.next_batch() for _ in range(3)), (reference.next_batch() for _ in range(3))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
