"""Datasets, client partitions and per-client batch streams."""
from .datasets import DATASET_NAMES, DataError, DatasetBundle, TensorData, load_dataset, read_idx
from .loader import ClientLoader, eval_batches, shard_range
from .partition import SCHEMES, PartitionError, partition_indices

__all__ = ["DATASET_NAMES", "DataError", "DatasetBundle", "TensorData", "load_dataset", "read_idx",
           "ClientLoader", "eval_batches", "shard_range", "SCHEMES", "PartitionError", "partition_indices"]
