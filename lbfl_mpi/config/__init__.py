"""Experiment configuration: nested dataclasses, TOML loading, ``--set`` overrides and validation.

One-way layers, each importing only the ones below it:
``fields`` (field metadata helper, ConfigError, text helpers) <- ``schema`` (the section dataclasses and
derived values) <- ``checks`` (validation) <- ``load`` (TOML, ``--set``). Every field carries its
documentation in ``metadata["help"]``, so docs/config.md and ``lbfl config`` come from one place.
Validation runs once, before MPI collectives, training or any file write; every problem raises
:class:`ConfigError` whose message names the key.
"""
from .checks import validate, validate_for_world
from .fields import INT_MAX, SEED_MAX, UNCATCHABLE_SIGNALS, ConfigError, dump_toml
from .load import load_config, parse_value
from .schema import (
                     DATASETS,
                     MODELS,
                     NUM_CLASSES,
                     BatchingConfig,
                     CompressConfig,
                     Config,
                     DataConfig,
                     DistConfig,
                     FLConfig,
                     HeteroConfig,
                     ModelConfig,
                     RunConfig,
                     ScalingConfig,
                     SyncConfig,
                     TelemetryConfig,
                     TrainConfig,
                     global_batch,
                     injects_noise,
                     num_classes,
                     reference,
                     sections,
                     uses_micro_batches,
)

__all__ = ["validate", "validate_for_world", "INT_MAX", "SEED_MAX", "UNCATCHABLE_SIGNALS", "ConfigError",
           "dump_toml", "load_config", "parse_value", "DATASETS", "MODELS", "NUM_CLASSES", "BatchingConfig",
           "CompressConfig", "Config", "DataConfig", "DistConfig", "FLConfig", "HeteroConfig", "ModelConfig",
           "RunConfig",
           "ScalingConfig", "SyncConfig", "TelemetryConfig", "TrainConfig", "global_batch", "num_classes",
           "reference", "sections", "uses_micro_batches", "injects_noise"]
