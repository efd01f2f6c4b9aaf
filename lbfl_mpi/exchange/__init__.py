"""Exchanges: how a flat vector is combined across ranks (dense, bucketed and overlapped, top-k)."""
from .base import DenseExchange, Exchange, Exchanged
from .bucketed import BucketedExchange
from .topk import TopKExchange, sparse_average, sparse_sum_, uses_dense_exchange

__all__ = ["DenseExchange", "Exchange", "Exchanged", "BucketedExchange", "TopKExchange",
           "sparse_average", "sparse_sum_", "uses_dense_exchange"]
