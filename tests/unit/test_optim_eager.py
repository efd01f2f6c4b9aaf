"""eager_step / skip_dynamo_import (optim.py) against torch's own ``opt.step()``: the same bits."""
import pytest
import torch

from lbfl_mpi.optim import _raw_step, eager_step, skip_dynamo_import


def _pair(make_opt):
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    mine = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    mine.load_state_dict(ref.state_dict())
    return (ref, make_opt(ref.parameters())), (mine, make_opt(mine.parameters()))


def _loss_step(model, opt, x, y, stepper):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    stepper(opt)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True),
    lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4),
    lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
], ids=["sgd", "sgd-momentum-wd", "sgd-nesterov-fused", "adam-wd", "adam-fused"])
def test_eager_step_matches_opt_step_bit_for_bit(make_opt):
    skip_dynamo_import()
    (ref, ref_opt), (mine, my_opt) = _pair(make_opt)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        _loss_step(ref, ref_opt, x, y, lambda o: o.step())
        _loss_step(mine, my_opt, x, y, eager_step)
    for a, b in zip(ref.parameters(), mine.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for a, b in zip(ref_opt.state.values(), my_opt.state.values(), strict=True):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    assert torch.is_grad_enabled()  # the grad mode is restored


def test_eager_step_runs_hooks_through_torch():
    """A registered step hook must still run: eager_step then falls back to opt.step()."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = []
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(1))
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.detach().clone()
    eager_step(opt)
    assert seen == [1]
    torch.testing.assert_close(model.weight.detach(), before - 0.5 * torch.ones(1, 2))


def test_raw_step_is_the_class_own_step():
    assert _raw_step(torch.optim.SGD).__qualname__ == "SGD.step"
    assert _raw_step(torch.optim.Adam).__qualname__ == "Adam.step"

    class Plain(torch.optim.Optimizer):  # a step torch did not wrap: eager_step uses opt.step()
        def step(self, closure=None):
            return None

    assert _raw_step(Plain) is None


def test_eager_step_calls_a_replaced_instance_step():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    calls = []
    opt.step = lambda closure=None: calls.append(closure)
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.detach().clone()
    eager_step(opt)
    assert calls == [None]
    torch.testing.assert_close(model.weight.detach(), before)  # the replacement ran, not SGD's update
