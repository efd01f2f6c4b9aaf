"""Builders around torchvision architectures, adapted to any channel count and to small images.

All models start from random weights (``weights=None``). Inputs up to 64 pixels get a stem that
keeps enough spatial resolution for the network's downsampling; larger inputs keep the ImageNet
layout.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _tvm():
    """torchvision.models, imported on first use: it costs seconds at start-up that the small models
    (and every short job, such as a requeued one) do not need."""
    from torchvision import models

    return models


class ModelError(ValueError):
    """A model cannot be built for the requested name or input shape; the message is one line."""


def _kaiming_conv(conv: nn.Conv2d) -> nn.Conv2d:
    # Same scheme torchvision's ResNet and VGG apply to their own convs.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _resnet(factory, input_shape: tuple, num_classes: int, norm: str = "default") -> nn.Module:
    """torchvision's ResNet; ``norm`` (model.norm) replaces its BatchNorm by GroupNorm or nothing."""
    from .small import norm_layer

    c, h, _ = input_shape
    extra = {} if norm in ("default", "batch") else {"norm_layer": lambda ch: norm_layer(norm, ch)}
    model = factory(weights=None, num_classes=num_classes, **extra)
    if h <= 64:
        # CIFAR stem: a 7x7/2 conv plus max-pool would leave a 32x32 image at 1x1 by layer4.
        model.conv1 = _kaiming_conv(nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False))
        model.maxpool = nn.Identity()
    elif c != 3:
        model.conv1 = _kaiming_conv(nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False))
    return model


def build_resnet18(input_shape: tuple, num_classes: int, norm: str = "default") -> nn.Module:
    return _resnet(_tvm().resnet18, input_shape, num_classes, norm)


def build_resnet50(input_shape: tuple, num_classes: int, norm: str = "default") -> nn.Module:
    return _resnet(_tvm().resnet50, input_shape, num_classes, norm)


def _vgg_init(model: nn.Module) -> None:
    # Mirrors torchvision.models.vgg.VGG.__init__(init_weights=True).
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            _kaiming_conv(m)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_vgg11(input_shape: tuple, num_classes: int) -> nn.Module:
    c, h, _ = input_shape
    if h > 64:
        model = _tvm().vgg11(weights=None, num_classes=num_classes)
        if c != 3:
            old = model.features[0]
            model.features[0] = _kaiming_conv(nn.Conv2d(c, old.out_channels, 3, padding=1))
        return model
    # Build on the meta device: the ImageNet classifier (~120M parameters) is replaced below and
    # would otherwise be allocated and initialised for nothing.
    with torch.device("meta"):
        model = _tvm().vgg11(weights=None, num_classes=num_classes)
        model.features[0] = nn.Conv2d(c, 64, kernel_size=3, padding=1)
        for i, layer in enumerate(model.features):
            if isinstance(layer, nn.MaxPool2d):
                # ceil_mode maps 1x1 to 1x1, so five halvings never shrink an 8x8 input to zero;
                # on even sizes it matches the plain pool.
                model.features[i] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )
    model = model.to_empty(device="cpu")
    _vgg_init(model)
    return model


def build_alexnet(input_shape: tuple, num_classes: int) -> nn.Module:
    c, h, _ = input_shape
    model = _tvm().alexnet(weights=None, num_classes=num_classes)
    if h < 64:
        # The 11x11/4 stem and unpadded 3x3/2 pools reduce anything below ~63 pixels to nothing.
        model.features[0] = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1)
        for i, layer in enumerate(model.features):
            if isinstance(layer, nn.MaxPool2d):
                model.features[i] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    elif c != 3:
        model.features[0] = nn.Conv2d(c, 64, kernel_size=11, stride=4, padding=2)
    return model


def vit_patch_size(image_size: int) -> int:
    """16 for ImageNet-like sizes; otherwise a small divisor so the image still yields several tokens.

    Small images use the largest divisor of ``image_size`` that is at most ``min(4, image_size // 4)``
    (32 -> 4, 28 -> 4, 8 -> 2), giving at least a 4x4 token grid where the size allows it.
    """
    if image_size >= 64 and image_size % 16 == 0:
        return 16
    limit = max(1, min(4, image_size // 4))
    return max(d for d in range(1, limit + 1) if image_size % d == 0)


def build_vit_b_16(input_shape: tuple, num_classes: int) -> nn.Module:
    c, h, w = input_shape
    if h != w:
        raise ModelError(f"model.name='vit_b_16' needs a square input, got {c}x{h}x{w}")
    patch = vit_patch_size(h)
    model = _tvm().VisionTransformer(
        image_size=h, patch_size=patch, num_layers=12, num_heads=12,
        hidden_dim=768, mlp_dim=3072, num_classes=num_classes,
    )
    if c != 3:
        conv = nn.Conv2d(c, 768, kernel_size=patch, stride=patch)
        # Same patchify-stem init as torchvision's VisionTransformer.__init__.
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(conv.bias)
        model.conv_proj = conv
    return model
