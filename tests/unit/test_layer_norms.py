"""Per-layer squared norms (float32 slices summed in float64) and the statistics built on them,
each compared with the float64 sum of squares ``t.double().pow(2).sum()`` as the reference."""
import pytest
import torch
from torch.testing import assert_close

from lbfl_mpi.scaling.critical import grad_sq_norm
from lbfl_mpi.scaling.noise_scale import NORM_CHUNK, layer_sq_norms
from lbfl_mpi.scaling.teacher import cosine, layer_scales


def _reference(tensors) -> torch.Tensor:
    return torch.stack([t.double().pow(2).sum().cpu() if t is not None else torch.zeros((), dtype=torch.float64)
                        for t in tensors])


def _wide_range_tensors(device) -> list:
    """Magnitudes from 1e-25 to 1e20, a tensor long enough that one float32 sum would drift past
    1e-4, sizes that do not divide the slice length, non-contiguous layouts, None, zeros, empty."""
    g = torch.Generator().manual_seed(0)

    def lognormal(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g) * torch.exp(3 * torch.randn(*shape, generator=g))

    ts = [
        None,
        torch.randn(4_000_000, generator=g),                    # one float32 sum is ~1.5e-4 off on CPU
        lognormal(3 * NORM_CHUNK + 17, scale=1e-6),
        torch.full((1000,), 1e-25),                             # squares below float32's range
        lognormal(5000, scale=1e-21),
        lognormal(70_000, scale=1e20),                          # squares above float32's range
        lognormal(64, 32, 3, 3, scale=1e3).to(memory_format=torch.channels_last),
        lognormal(300, 500).t(),                                # transposed: not contiguous
        lognormal(400, 400)[::2],                               # strided rows
        torch.zeros(2 * NORM_CHUNK),
        torch.empty(0),
        torch.tensor(-2.5),                                     # 0-dim
        lognormal(1000, scale=1e-3).double(),
        lognormal(1000).bfloat16(),
        None,
    ]
    return [t.to(device) if t is not None else None for t in ts]


def _check_layer_sq_norms(device):
    ts = _wide_range_tensors(device)
    got = layer_sq_norms(ts)
    assert got.dtype == torch.float64 and got.device.type == torch.device(device).type
    assert_close(got.cpu(), _reference(ts), rtol=1e-4, atol=0)


def test_layer_sq_norms_match_float64_reference():
    """Against the float64 reference, rtol 1e-4, on CPU."""
    _check_layer_sq_norms("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layer_sq_norms_match_float64_reference_cuda():
    """Against the float64 reference, rtol 1e-4, with the tensors (and the result) on the GPU."""
    _check_layer_sq_norms("cuda")


def test_layer_sq_norms_missing_tensors():
    """All-None gives zeros on CPU (the reference: a missing tensor counts 0); an empty list, none."""
    assert_close(layer_sq_norms([None, None, None]), torch.zeros(3, dtype=torch.float64), rtol=0, atol=0)
    assert layer_sq_norms([]).shape == (0,)
    assert_close(layer_sq_norms(iter([None, torch.ones(4)])), torch.tensor([0.0, 4.0], dtype=torch.float64),
                 rtol=0, atol=0)


def test_grad_sq_norm_layer_scales_and_cosine_match_float64():
    """|G|^2 over parameters (one without a gradient), per-layer RMS and the cosine, against the
    same quantities computed from float64 copies."""
    ts = [t for t in _wide_range_tensors("cpu")[1:9] if t.numel()]
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in ts] + [torch.nn.Parameter(torch.ones(3))]
    for p, t in zip(params, ts):
        p.grad = t
    assert grad_sq_norm(params) == pytest.approx(float(_reference(ts).sum()), rel=1e-4)
    ref_rms = (_reference(ts) / torch.tensor([t.numel() for t in ts], dtype=torch.float64)).sqrt()
    assert_close(layer_scales(ts), ref_rms.float().clamp_min(1e-12), rtol=1e-4, atol=0)
    g = torch.Generator().manual_seed(1)
    a = [torch.randn(n, generator=g) for n in (10, 3 * NORM_CHUNK + 5)]
    b = [x + 0.5 * torch.randn(x.shape, generator=g) for x in a]
    a64, b64 = torch.cat([x.double() for x in a]), torch.cat([y.double() for y in b])
    ref_cos = float(a64 @ b64 / (a64.norm() * b64.norm()))
    assert cosine(a, b) == pytest.approx(ref_cos, rel=1e-5)
