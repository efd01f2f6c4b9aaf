"""ClientLoader streams and eval sharding, checked against the documented permutation stream."""
import numpy as np
import pytest
import torch

from lbfl_mpi.data import ClientLoader, TensorData, eval_batches


def _data(n=50):
    # x encodes the sample index so batches can be mapped back to indices
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).repeat(1, 1, 2, 2)
    return TensorData(x, torch.arange(n, dtype=torch.int64) % 7)


class _ItemDataset:
    """Map-style dataset standing in for a torchvision one: items (tensor, int)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), int(i) % 7


def _ids(x):
    return x[:, 0, 0, 0].long().tolist()


def _reference(indices, seed, rank, passes):
    return np.concatenate([np.random.default_rng([seed, rank, p]).permutation(indices)
                           for p in range(passes)]).tolist()


IDX = np.array([3, 5, 8, 13, 21, 22, 30, 34, 40, 41, 47], dtype=np.int64)


@pytest.mark.parametrize("make", [_data, _ItemDataset])
def test_stream_matches_reference_and_straddles(make):
    ld = ClientLoader(make(50), IDX, batch_size=4, seed=9, rank=2)
    got = []
    for _ in range(8):  # 32 samples: crosses two pass boundaries (11, 22) mid-batch
        x, y = ld.next_batch()
        assert x.shape == (4, 1, 2, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.tolist() == [i % 7 for i in _ids(x)]
        got += _ids(x)
    assert got == _reference(IDX, 9, 2, 3)[:32]
    assert ld.samples_seen == 32 and ld.epoch == pytest.approx(32 / 11)


def test_one_pass_covers_partition_once_and_reshuffles():
    ld = ClientLoader(_data(), IDX, batch_size=11, seed=0, rank=0)
    p0, p1 = _ids(ld.next_batch()[0]), _ids(ld.next_batch()[0])
    assert sorted(p0) == IDX.tolist() and sorted(p1) == IDX.tolist()
    assert p0 != p1
    assert ld.epoch == 2.0


def test_rank_and_seed_change_the_stream():
    a = _ids(ClientLoader(_data(), IDX, 11, seed=0, rank=0).next_batch()[0])
    b = _ids(ClientLoader(_data(), IDX, 11, seed=0, rank=1).next_batch()[0])
    c = _ids(ClientLoader(_data(), IDX, 11, seed=1, rank=0).next_batch()[0])
    assert a != b and a != c


@pytest.mark.parametrize("make", [_data, _ItemDataset])
def test_state_dict_resume_continues_identically(make):
    full = ClientLoader(make(50), IDX, 3, seed=4, rank=1)
    ref = [_ids(full.next_batch()[0]) for _ in range(12)]
    first = ClientLoader(make(50), IDX, 3, seed=4, rank=1)
    for _ in range(5):
        first.next_batch()
    state = first.state_dict()
    assert set(state) == {"pass", "offset", "samples_seen"} and state["pass"] == 1
    resumed = ClientLoader(make(50), IDX, 3, seed=4, rank=1)
    resumed.load_state_dict(dict(state))
    assert resumed.samples_seen == 15
    assert [_ids(resumed.next_batch()[0]) for _ in range(7)] == ref[5:]


def test_batch_size_change_mid_stream():
    ld = ClientLoader(_data(), IDX, 2, seed=3, rank=0)
    sizes = [2, 2, 5, 1, 9, 3]
    got = []
    for b in sizes:
        ld.batch_size = b
        x, _ = ld.next_batch()
        assert len(x) == b
        got += _ids(x)
    assert got == _reference(IDX, 3, 0, 3)[:sum(sizes)]
    assert ld.samples_seen == sum(sizes)


def test_batch_larger_than_partition():
    ld = ClientLoader(_data(), IDX[:3], 7, seed=0, rank=0)
    assert _ids(ld.next_batch()[0]) == _reference(IDX[:3], 0, 0, 3)[:7]


def test_workers_stream_resume_and_batch_change():
    ds = _ItemDataset(50)
    sizes = [3, 3, 3, 3, 3, 3, 5, 2]
    ld = ClientLoader(ds, IDX, 3, seed=2, rank=0, workers=1)
    got = [_ids(ld.next_batch()[0]) for _ in range(4)]
    state = ld.state_dict()  # counts consumed batches only, not those prefetched by the worker
    ld.close()
    assert state["samples_seen"] == 12
    ld2 = ClientLoader(ds, IDX, 3, seed=2, rank=0, workers=1)
    ld2.load_state_dict(state)
    for b in sizes[4:]:
        ld2.batch_size = b
        got.append(_ids(ld2.next_batch()[0]))
    ld2.close()
    assert [len(g) for g in got] == sizes
    assert sum(got, []) == _reference(IDX, 2, 0, 4)[:sum(sizes)]


def test_bad_state_and_empty_partition():
    ld = ClientLoader(_data(), IDX, 2, seed=0, rank=0)
    with pytest.raises(ValueError, match="offset"):
        ld.load_state_dict({"pass": 0, "offset": 11, "samples_seen": 0})
    with pytest.raises(ValueError, match="non-empty"):
        ClientLoader(_data(), np.array([], dtype=np.int64), 2, seed=0, rank=0)


@pytest.mark.parametrize("make", [_data, _ItemDataset])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [3, 10, 50])
def test_eval_shards_cover_once(make, world, n):
    ds = make(n)
    seen, starts = [], []
    for rank in range(world):
        ids = []
        for x, y in eval_batches(ds, rank, world, batch_size=4):
            assert len(x) <= 4 and y.dtype == torch.int64 and x.dtype == torch.float32
            assert y.tolist() == [i % 7 for i in _ids(x)]
            ids += _ids(x)
        assert ids == list(range(ids[0], ids[0] + len(ids))) if ids else True  # contiguous
        starts.append(len(ids))
        seen += ids
    assert seen == list(range(n))
    assert max(starts) - min(starts) <= 1


# ------------------------------------------------------------------ device-resident TensorData
def _bundle(name):
    from lbfl_mpi.config import DataConfig
    from lbfl_mpi.data import load_dataset
    if name == "digits":
        pytest.importorskip("sklearn")
        return load_dataset(DataConfig(name=name))
    return load_dataset(DataConfig(name=name, synthetic_train=600, synthetic_test=130))


def _assert_same_batches(bundle, device):
    """Batches of a loader keeping the data on ``device`` against the host loader's (the reference):
    equal bit for bit, in order, through batch-size changes and a state_dict/load_state_dict resume."""
    parts = np.random.default_rng(0).permutation(len(bundle.train))[:97]  # a client's partition
    host = ClientLoader(bundle.train, parts, 8, seed=5, rank=1)
    dev = ClientLoader(bundle.train, parts, 8, seed=5, rank=1, device=device)
    assert dev.device_resident and not host.device_resident
    sizes = [8, 8, 3, 40, 1, 64, 8]  # 64 straddles a pass boundary of the 97-sample partition
    state = None
    for step, b in enumerate(sizes):
        host.batch_size = dev.batch_size = b
        (xh, yh), (xd, yd) = host.next_batch(), dev.next_batch()
        assert xd.device.type == torch.device(device).type and yd.device == xd.device
        assert xd.dtype == torch.float32 and yd.dtype == torch.int64
        torch.testing.assert_close(xd.cpu(), xh, rtol=0, atol=0)
        torch.testing.assert_close(yd.cpu(), yh, rtol=0, atol=0)
        if step == 3:
            state = dev.state_dict()
    assert dev.state_dict() == host.state_dict()
    # Resume the resident loader from the state saved after 4 steps; the host loader's last three
    # batches are the reference.
    resumed = ClientLoader(bundle.train, parts, 8, seed=5, rank=1, device=device)
    resumed.load_state_dict(state)
    ref = ClientLoader(bundle.train, parts, 8, seed=5, rank=1)
    ref.load_state_dict(state)
    for b in sizes[4:]:
        resumed.batch_size = ref.batch_size = b
        (xr, yr), (xh, yh) = resumed.next_batch(), ref.next_batch()
        torch.testing.assert_close(xr.cpu(), xh, rtol=0, atol=0)
        torch.testing.assert_close(yr.cpu(), yh, rtol=0, atol=0)
    # Evaluation shards against the host eval_batches of the same test set.
    for rank in range(2):
        got = list(eval_batches(bundle.test, rank, 2, 50, device=device))
        want = list(eval_batches(bundle.test, rank, 2, 50))
        assert len(got) == len(want) > 0
        for (xd, yd), (xh, yh) in zip(got, want):
            assert xd.device.type == torch.device(device).type
            torch.testing.assert_close(xd.cpu(), xh, rtol=0, atol=0)
            torch.testing.assert_close(yd.cpu(), yh, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_resident_cpu_batches_equal_host_batches(name):
    """device="cpu" (resident path: index tensor + gather) against the host loader, bit for bit."""
    _assert_same_batches(_bundle(name), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_resident_cuda_batches_equal_host_batches(name):
    """Data kept on the GPU against the host loader's batches, bit for bit."""
    bundle = _bundle(name)
    _assert_same_batches(bundle, "cuda")
    # one copy per dataset and device, whatever the spelling of the device
    assert bundle.train.to("cuda") is bundle.train.to(torch.device("cuda", torch.cuda.current_device()))
    assert bundle.test.to("cuda").x.is_cuda


def test_tensordata_to_copies_once():
    """TensorData.to: a no-op on the tensors' own device and dtypes; otherwise one cached copy,
    equal to the original (the reference) after the documented casts."""
    ds = _data()
    assert ds.to("cpu") is ds
    wide = TensorData(ds.x.double(), ds.y.int())
    narrow = wide.to("cpu")
    assert narrow is not wide and narrow is wide.to(torch.device("cpu"))
    torch.testing.assert_close(narrow.x, ds.x, rtol=0, atol=0)
    torch.testing.assert_close(narrow.y, ds.y, rtol=0, atol=0)


def test_device_is_ignored_for_item_datasets():
    """Image-file datasets keep the host path: same batches as without ``device`` (the reference)."""
    ld = ClientLoader(_ItemDataset(50), IDX, 4, seed=9, rank=2, device="cpu")
    ref = ClientLoader(_ItemDataset(50), IDX, 4, seed=9, rank=2)
    assert not ld.device_resident
    for _ in range(4):
        torch.testing.assert_close(ld.next_batch()[0], ref.next_batch()[0], rtol=0, atol=0)
    got = [x for x, _ in eval_batches(_ItemDataset(10), 0, 1, 4, device="cpu")]
    want = [x for x, _ in eval_batches(_ItemDataset(10), 0, 1, 4)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
