"""Model registry: ``build_model(name, input_shape, num_classes)`` returns a randomly initialised model.

Every builder takes ``input_shape=(C, H, W)`` and ``num_classes`` and returns a module mapping
``[N, C, H, W]`` to logits ``[N, num_classes]``. Initialisation draws from torch's global RNG, so
seeding torch before building gives identical parameters.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .small import NORMS, build_bncnn, build_cnn, build_mlp
from .vision import (
    ModelError,
    build_alexnet,
    build_resnet18,
    build_resnet50,
    build_vgg11,
    build_vit_b_16,
)

__all__ = ["MODELS", "NORMS", "NORM_MODELS", "ModelError", "build_model"]

MODELS: dict[str, Callable[[tuple, int], nn.Module]] = {
    "cnn": build_cnn,
    "bncnn": build_bncnn,
    "mlp": build_mlp,
    "resnet18": build_resnet18,
    "resnet50": build_resnet50,
    "vgg11": build_vgg11,
    "alexnet": build_alexnet,
    "vit_b_16": build_vit_b_16,
}


# models whose normalisation model.norm can choose (the others keep their own)
NORM_MODELS = ("cnn", "bncnn", "resnet18", "resnet50")


def build_model(name: str, input_shape: tuple, num_classes: int, norm: str = "default",
                ghost_batch: int = 0, width: int = 1) -> nn.Module:
    """Build model ``name`` for images of ``input_shape`` (C, H, W) and ``num_classes`` outputs;
    ``norm`` (model.norm: default, batch, group, none) for the models in NORM_MODELS; ``ghost_batch``
    > 0 makes every BatchNorm layer a ghost BatchNorm of that many samples (ghost_bn.py); ``width``
    (model.width) multiplies bncnn's widths."""
    if width != 1 and name != "bncnn":
        raise ModelError(f"model.width={width}: applies to model.name='bncnn', not {name!r}")
    model = _build(name, input_shape, num_classes, norm, {"width": width} if width != 1 else {})
    if ghost_batch:
        from .ghost_bn import ghost_batch_norm_

        if not ghost_batch_norm_(model, ghost_batch):
            raise ModelError(f"model.ghost_batch={ghost_batch}: model.name={name!r} with model.norm={norm!r} has "
                             "no BatchNorm layer (use bncnn, or model.norm='batch')")
    return model


def _build(name: str, input_shape: tuple, num_classes: int, norm: str, extra: dict) -> nn.Module:
    if name not in MODELS:
        raise ModelError(f"model.name={name!r} is not a model; choose one of: {', '.join(sorted(MODELS))}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ModelError(f"model {name!r} needs input_shape=(C, H, W) of positive ints, got {input_shape!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"model {name!r} needs num_classes >= 1, got {num_classes!r}")
    if norm not in NORMS:
        raise ModelError(f"model.norm={norm!r}: choose one of {', '.join(NORMS)}")
    if norm == "default":
        return MODELS[name](shape, num_classes, **extra)
    if name not in NORM_MODELS and name != "mlp":
        raise ModelError(f"model.norm={norm!r}: model.name={name!r} keeps its own normalisation; "
                         f"model.norm applies to {', '.join(NORM_MODELS)}")
    try:
        return MODELS[name](shape, num_classes, norm, **extra)
    except ValueError as e:
        raise ModelError(str(e)) from None
