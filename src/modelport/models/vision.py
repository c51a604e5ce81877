"""torchvision classifiers, randomly initialised, adapted to small (28/32-pixel) inputs and any channel count.

Small-input behaviour (``image_size <= 64``), because the ImageNet stems shrink a 32-pixel image to nothing:
- resnet*: conv1 becomes 3×3 stride 1 and the max pool is removed (the usual CIFAR ResNet stem).
- mobilenet_v3_small: the first conv gets stride 1.
- vgg*: the last max pool is dropped (five 2× pools would take 28 px to 0) and the 7×7 adaptive pool plus the
  25088→4096→4096 classifier become a global average pool plus 512→512→classes (the usual CIFAR VGG head).
- alexnet: the 11×11 stride-4 stem becomes 3×3 stride 1 and the head becomes a global average pool plus
  256→1024→1024→classes.
``in_channels != 3`` replaces the first conv (same kernel, stride and padding). Weights are never downloaded.
"""

from __future__ import annotations

from torch import nn

from modelport.errors import InputError

SMALL_INPUT_MAX = 64


def _is_small(image_size: int) -> bool:
    return image_size <= SMALL_INPUT_MAX


def _require_min_size(arch: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise InputError(
            f"Image size {image_size} is too small for {arch}: its poolings need at least {minimum} pixels.",
            fix=f"use an image size of at least {minimum} (28 or 32 for the small-input variant).",
        )


def _conv_like(conv: nn.Conv2d, *, in_channels: int, kernel: int | None = None, stride: int | None = None,
               padding: int | None = None) -> nn.Conv2d:
    """A freshly initialised copy of ``conv`` with another input count, kernel, stride or padding."""
    k = conv.kernel_size[0] if kernel is None else kernel
    new = nn.Conv2d(
        in_channels, conv.out_channels, kernel_size=k,
        stride=conv.stride if stride is None else stride,
        padding=conv.padding if padding is None else padding,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _resnet(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision import models

    model = getattr(models, name)(weights=None, num_classes=num_classes)
    if _is_small(image_size):
        model.conv1 = _conv_like(model.conv1, in_channels=in_channels, kernel=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _conv_like(model.conv1, in_channels=in_channels)
    return model


def _vgg(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import torch
    from torchvision import models

    if not _is_small(image_size):
        model = getattr(models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.features[0] = _conv_like(model.features[0], in_channels=in_channels)
        return model
    _require_min_size(name, image_size, 16)
    # built on the meta device: initialising the 25088→4096 layer we are about to replace costs ~1 s
    with torch.device("meta"):
        model = getattr(models, name)(weights=None, num_classes=num_classes)
        first = model.features[0]
        model.features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        model.features = nn.Sequential(*list(model.features.children())[:-1])  # drop the last max pool
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(512, num_classes)
        )
    model.to_empty(device="cpu")
    for m in model.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # weight 1, bias 0 and fresh running statistics
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def _alexnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision import models

    model = models.alexnet(weights=None, num_classes=num_classes)
    if _is_small(image_size):
        _require_min_size("alexnet", image_size, 15)
        model.features[0] = _conv_like(model.features[0], in_channels=in_channels, kernel=3, stride=1, padding=1)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5), nn.Linear(256, 1024), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(1024, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )
    elif in_channels != 3:
        model.features[0] = _conv_like(model.features[0], in_channels=in_channels)
    return model


def _mobilenet_v3_small(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision import models

    model = models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    if _is_small(image_size) or in_channels != 3:
        stride = 1 if _is_small(image_size) else None
        model.features[0][0] = _conv_like(stem, in_channels=in_channels, stride=stride)
    return model


def resnet18(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet18", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def resnet34(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet34", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def resnet50(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet50", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg11(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg11", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg11_bn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg11_bn", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg13(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg13", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg13_bn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg13_bn", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg16(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg16", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg16_bn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg16_bn", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg19(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg19", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def vgg19_bn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg("vgg19_bn", num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def alexnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _alexnet(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def mobilenet_v3_small(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _mobilenet_v3_small(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
