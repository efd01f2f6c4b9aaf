"""Small hand-written models for low-resolution inputs: ``cnn`` and ``mlp``.

Neither uses BatchNorm or dropout, so every sample's forward pass is independent of the rest of
the batch: a batch split across ranks gives the same gradients as one process on the whole batch.
"""
from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 convs, one 2x2 max-pool, then a fixed 4x4 pool so the head size is input-independent."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
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


def build_cnn(input_shape: tuple, num_classes: int) -> nn.Module:
    c, _, _ = input_shape
    return SmallCNN(c, num_classes)


def build_mlp(input_shape: tuple, num_classes: int) -> nn.Module:
    c, h, w = input_shape
    return MLP(c * h * w, num_classes)
