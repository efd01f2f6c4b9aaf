"""dist.backend selection: the same decision on every rank, refusals before anything can hang."""
from types import SimpleNamespace

import pytest
import torch

from lbfl_mpi.comm.torch_plane import BackendError, select_backend


def fake_comm(ranks_per_node: int, nodes: int = 1):
    """A job of identical nodes: every rank reports the same facts as this one."""
    return SimpleNamespace(local_size=ranks_per_node, allgather_obj=lambda mine: [mine] * (ranks_per_node * nodes))


def gpus(monkeypatch, n):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_auto_is_mpi_without_cuda(monkeypatch):
    gpus(monkeypatch, 0)
    assert select_backend("auto", fake_comm(2)) == "mpi"
    assert select_backend("gloo", fake_comm(2)) == "gloo"


def test_auto_is_nccl_with_one_gpu_per_rank_and_mpi_when_ranks_share(monkeypatch):
    gpus(monkeypatch, 4)
    monkeypatch.setattr("lbfl_mpi.comm.torch_plane._available", lambda name: True)
    assert select_backend("auto", fake_comm(4, nodes=2)) == "nccl"
    gpus(monkeypatch, 1)
    assert select_backend("auto", fake_comm(4, nodes=2)) == "mpi"  # 4 ranks on one GPU


def test_nccl_refusals_name_the_cause(monkeypatch):
    monkeypatch.setattr("lbfl_mpi.comm.torch_plane._available", lambda name: True)
    gpus(monkeypatch, 0)
    with pytest.raises(BackendError, match="no CUDA device on rank"):
        select_backend("nccl", fake_comm(2))
    gpus(monkeypatch, 1)
    with pytest.raises(BackendError, match="share a GPU.*2 ranks on a node with 1 GPU"):
        select_backend("nccl", fake_comm(2))
    with pytest.raises(BackendError, match="dist.backend='tcp'"):
        select_backend("tcp", fake_comm(1))
