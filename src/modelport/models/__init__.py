"""Registry of architectures a checkpoint can be loaded into.

Explicit dict from name to a ``ModelSpec`` whose factory is a ``"module:attr"`` string resolved on use, so listing
architectures (``modelport --help``, error messages) never imports torch or torchvision. Every factory takes
keyword-only ``num_classes``, ``in_channels`` and ``image_size`` and returns a randomly initialised ``nn.Module``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelport.core.registry import resolve
from modelport.errors import InputError, unknown_choice

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "get_spec",
    "list_architectures",
    "model_input_shape",
]


@dataclass(frozen=True)
class ModelSpec:
    """What an architecture is and the input it expects by default."""

    name: str
    factory: str  # "module:attr", resolved with core.registry.resolve when built
    in_channels: int
    image_size: int
    num_classes: int = 10
    description: str = ""
    family: str = "simple"  # "simple" | "torchvision"
    student_of: str | None = None


_S = "modelport.models.simple"
_V = "modelport.models.vision"


def _tv(name: str, description: str) -> ModelSpec:
    return ModelSpec(name, f"{_V}:{name}", 3, 32, description=description, family="torchvision")


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("simple-mnist", f"{_S}:simple_mnist", 1, 28,
              description="2 conv + 2 fc CNN of the seed study (421,642 params at 1×28×28)"),
    ModelSpec("simple-mnist-student", f"{_S}:simple_mnist_student", 1, 28,
              description="simple-mnist at 50% width (distillation student)", student_of="simple-mnist"),
    ModelSpec("simple-cifar", f"{_S}:simple_cifar", 3, 32,
              description="3 conv + 2 fc CNN of the seed study (2,473,610 params at 3×32×32)"),
    ModelSpec("simple-cifar-student", f"{_S}:simple_cifar_student", 3, 32,
              description="simple-cifar at 50% width (distillation student)", student_of="simple-cifar"),
    ModelSpec("lenet5", f"{_S}:lenet5", 1, 28, description="LeNet-5 (ReLU, max pool); padding 2 below 32 px"),
    ModelSpec("lenet-300-100", f"{_S}:lenet_300_100", 1, 28, description="MLP 784→300→100→10"),
    _tv("resnet18", "torchvision ResNet-18; 3×3 stride-1 stem without max pool at ≤64 px"),
    _tv("resnet34", "torchvision ResNet-34; 3×3 stride-1 stem without max pool at ≤64 px"),
    _tv("resnet50", "torchvision ResNet-50; 3×3 stride-1 stem without max pool at ≤64 px"),
    _tv("mobilenet_v3_small", "torchvision MobileNetV3-Small; stride-1 first conv at ≤64 px"),
    _tv("vgg11", "torchvision VGG-11; at ≤64 px last pool dropped, global pool + 512→512→classes head"),
    _tv("vgg11_bn", "torchvision VGG-11-BN; small-input head as vgg11"),
    _tv("vgg13", "torchvision VGG-13; small-input head as vgg11"),
    _tv("vgg13_bn", "torchvision VGG-13-BN; small-input head as vgg11"),
    _tv("vgg16", "torchvision VGG-16; small-input head as vgg11"),
    _tv("vgg16_bn", "torchvision VGG-16-BN; small-input head as vgg11"),
    _tv("vgg19", "torchvision VGG-19; small-input head as vgg11"),
    _tv("vgg19_bn", "torchvision VGG-19-BN; small-input head as vgg11"),
    _tv("alexnet", "torchvision AlexNet; at ≤64 px 3×3 stride-1 stem, global pool + 256→1024→1024→classes head"),
)

ARCHITECTURES: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def list_architectures() -> list[str]:
    return list(ARCHITECTURES)


def get_spec(arch: str) -> ModelSpec:
    """The spec of ``arch`` or the standard unknown-architecture error listing what exists."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise unknown_choice("architecture", arch, list(ARCHITECTURES)) from None


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer ≥ {minimum}, got {value!r}.", fix=f"pass a {name} ≥ {minimum}.")
    return value


def model_input_shape(arch: str, in_channels: int | None = None, image_size: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) of one input image for ``arch`` with the given overrides."""
    spec = get_spec(arch)
    c = spec.in_channels if in_channels is None else _positive("in_channels", in_channels)
    s = spec.image_size if image_size is None else _positive("image_size", image_size)
    return (c, s, s)


def build_model(
    arch: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    pretrained: bool = False,
) -> "nn.Module":
    """A randomly initialised model of ``arch``; fc sizes follow ``in_channels`` and ``image_size``."""
    spec = get_spec(arch)
    if pretrained:
        raise InputError(
            f"Pretrained weights for '{arch}' are not available: modelport works offline and never downloads weights.",
            fix="train the model or pass your own checkpoint (.safetensors/.pt) instead of pretrained=True.",
        )
    c, s, _ = model_input_shape(arch, in_channels, image_size)
    n = spec.num_classes if num_classes is None else _positive("num_classes", num_classes)
    factory = resolve(spec.factory)
    return factory(num_classes=n, in_channels=c, image_size=s)


def count_parameters(model: "nn.Module") -> int:
    """Number of parameters (trainable or not); buffers such as BatchNorm statistics are not counted."""
    return sum(p.numel() for p in model.parameters())
