"""Client optimizers (SGD, Adam, AdamW, LARS, LAMB), the learning-rate schedule, and an eager step."""
from .build import build_optimizer, param_groups
from .eager import _raw_step, eager_step, skip_dynamo_import
from .grads import grads_or_zeros_
from .lamb import LAMB
from .lars import LARS
from .schedule import lr_at, set_lr_

__all__ = ["LAMB", "LARS", "_raw_step", "build_optimizer", "eager_step", "grads_or_zeros_", "lr_at", "param_groups",
           "set_lr_", "skip_dynamo_import"]
