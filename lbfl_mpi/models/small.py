"""Small hand-written models for low-resolution inputs: ``cnn``, ``bncnn`` and ``mlp``.

``cnn`` and ``mlp`` have no normalisation layer by default, so every sample's forward pass is
independent of the rest of the batch: a batch split across ranks gives the same gradients as one
process on the whole batch. ``bncnn`` is a small VGG-like network with BatchNorm after every conv, like
the paper's models (ResNet-50, VGG-11, AlexNet), that trains in minutes on a CPU.

``model.norm`` (see :func:`norm_layer`) puts BatchNorm, GroupNorm or nothing after every conv.
BatchNorm normalises over the batch a client sees, its own local batch: under BSP each client's
gradient is that of a model normalised with its own batch statistics, which with non-IID clients
differ from the global batch's (Hsieh et al., "The Non-IID Data Quagmire of Decentralized Machine
Learning", ICML 2020). GroupNorm (Wu & He, ECCV 2018) normalises each sample on its own and has no
such dependence.
"""
from __future__ import annotations

from torch import nn

NORMS = ("default", "batch", "group", "none")


def group_count(channels: int) -> int:
    """GroupNorm groups: Wu & He's 32, but at least 4 channels per group in narrow layers."""
    return max(1, min(32, channels // 4))


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation after a conv of ``channels`` outputs: BatchNorm2d, GroupNorm or Identity."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"model.norm={norm!r}: expected batch, group or none")


class SmallCNN(nn.Module):
    """Two 3x3 convs (each optionally normalised), one 2x2 max-pool, then a fixed 4x4 pool so the head
    size is input-independent."""

    def __init__(self, in_channels: int, num_classes: int, norm: str = "none") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            norm_layer(norm, 32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            norm_layer(norm, 64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            # 8x8 digits become 4x4 after the max-pool; larger images are averaged down to the same grid.
            nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """One hidden layer of 128 units over the flattened image."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.net(x)


class BNCNN(nn.Module):
    """VGG-like: [3x3 conv, norm, ReLU] at widths 16, 32 and 64 with a 2x2 max-pool after the first two,
    an adaptive average pool to 2x2, then two fully connected layers (64 hidden units). About 40 k
    parameters and about 0.4 ms per 28x28 image (forward and backward) on one CPU core, so that the
    BatchNorm experiments run on a laptop; BatchNorm by default. ``width`` (model.width) multiplies
    every width and the hidden units: 2 gives 32/64/128 channels and about 4x the parameters."""

    def __init__(self, in_channels: int, num_classes: int, norm: str = "batch", width: int = 1) -> None:
        super().__init__()
        layers, c = [], in_channels
        for w in (16, "pool", 32, "pool", 64):
            if w == "pool":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(c, w * width, kernel_size=3, padding=1, bias=norm == "none"),
                       norm_layer(norm, w * width), nn.ReLU(inplace=True)]
            c = w * width
        hidden = 64 * width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((2, 2)))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * 4, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def build_cnn(input_shape: tuple, num_classes: int, norm: str = "default") -> nn.Module:
    c, _, _ = input_shape
    return SmallCNN(c, num_classes, "none" if norm == "default" else norm)


def build_bncnn(input_shape: tuple, num_classes: int, norm: str = "default", width: int = 1) -> nn.Module:
    c, _, _ = input_shape
    return BNCNN(c, num_classes, "batch" if norm == "default" else norm, width)


def build_mlp(input_shape: tuple, num_classes: int, norm: str = "default") -> nn.Module:
    if norm not in ("default", "none"):
        raise ValueError(f"model.norm={norm!r}: the mlp has no conv layer to normalise (use default or none)")
    c, h, w = input_shape
    return MLP(c * h * w, num_classes)
