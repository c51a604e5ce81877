"""Small CNN/MLP architectures of the seed study, sized from the input so they run at 28 or 32 pixels.

Imported only when a registry entry is built (torch is heavy). Fully-connected sizes are computed from
``image_size`` and ``in_channels``, so ``simple-mnist`` runs at 1×28×28 and ``simple-cifar`` at 3×32×32 with the
parameter counts of the study (421,642 and 2,473,610).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modelport.errors import InputError


class SimpleCNN(nn.Module):
    """``len(channels)`` blocks of conv3×3(p1)+ReLU+maxpool2, then fc→hidden+ReLU, fc→classes."""

    def __init__(
        self, channels: Sequence[int], hidden: int, *, num_classes: int, in_channels: int, image_size: int
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        size, prev = image_size, in_channels
        for ch in channels:
            blocks += [nn.Conv2d(prev, ch, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            size //= 2
            prev = ch
        if size < 1:
            raise InputError(
                f"Image size {image_size} is too small for {len(channels)} 2× poolings (needs ≥ {2 ** len(channels)}).",
                fix=f"use an image size of at least {2 ** len(channels)} pixels.",
            )
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(prev * size * size, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 (conv5×5 6 → pool → conv5×5 16 → pool → 120 → 84 → classes), ReLU and max pooling.

    A 28-pixel input gets padding 2 on the first conv, so 28×28 and 32×32 both reach the classic 16×5×5 map.
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        pad = 2 if image_size < 32 else 0
        size = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        if size < 1:
            raise InputError(
                f"Image size {image_size} is too small for LeNet-5 (needs ≥ 12 pixels).", fix="use 28 or 32 pixels."
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * size * size, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet300100(nn.Module):
    """The MLP of the pruning literature: flatten → 300 → 100 → classes."""

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, 300), nn.ReLU(inplace=True),
            nn.Linear(300, 100), nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def simple_mnist(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SimpleCNN((32, 64), 128, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def simple_mnist_student(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SimpleCNN((16, 32), 64, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def simple_cifar(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SimpleCNN((64, 128, 256), 512, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def simple_cifar_student(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SimpleCNN((32, 64, 128), 256, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def lenet5(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def lenet_300_100(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet300100(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
