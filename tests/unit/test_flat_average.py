"""Weighted-average maths of the flat buffer, with the allreduce done by hand (a sum over ranks)."""
import torch
from torch.testing import assert_close

from lbfl_mpi.exchange.flat import FlatBuffer


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g), torch.randn(5, generator=g), torch.randn(2, 2, 2, generator=g)]


def test_pack_unpack_weighted_average_equals_closed_form():
    weights = [3.0, 7.0, 1.0]
    ranks = [_tensors(s) for s in range(3)]
    bufs = []
    for w, ts in zip(weights, ranks):
        fb = FlatBuffer(ts)
        bufs.append(fb.pack_(ts, weight=w).clone())
    summed = torch.stack(bufs).sum(0)  # what MPI_Allreduce(SUM) produces
    out = [torch.empty_like(t) for t in ranks[0]]
    fb = FlatBuffer(out)
    fb.buf.copy_(summed)
    total = fb.unpack_(out)
    assert total == sum(weights)
    for i, t in enumerate(out):
        expect = sum(w * r[i] for w, r in zip(weights, ranks)) / sum(weights)
        assert_close(t, expect)


def test_none_gradient_packs_as_zero_and_unpack_without_average():
    ts = _tensors(0)
    fb = FlatBuffer(ts)
    fb.pack_([ts[0], None, ts[2]], weight=2.0)
    out = [torch.empty_like(t) for t in ts]
    assert fb.unpack_(out, average=False) == 2.0
    assert_close(out[0], 2 * ts[0])
    assert_close(out[1], torch.zeros(5))
    assert fb.nbytes == (12 + 5 + 8 + 1) * 4
