"""Architecture registry: exact parameter counts, forward shapes, small-input variants, errors, ONNX export."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from modelport.errors import InputError
from modelport.models import (
    ARCHITECTURES,
    build_model,
    count_parameters,
    list_architectures,
    model_input_shape,
)

# num_classes=10 at the registry's default input (1×28×28 for simple-mnist/lenet*, 3×32×32 otherwise)
EXPECTED_PARAMS = {
    "simple-mnist": 421_642,
    "simple-mnist-student": 105_866,
    "simple-cifar": 2_473_610,
    "simple-cifar-student": 620_362,
    "lenet5": 61_706,
    "lenet-300-100": 266_610,
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "mobilenet_v3_small": 1_528_106,
    "vgg11": 9_488_266,
    "vgg11_bn": 9_493_770,
    "vgg13": 9_672_778,
    "vgg13_bn": 9_678_666,
    "vgg16": 14_982_474,
    "vgg16_bn": 14_990_922,
    "vgg19": 20_292_170,
    "vgg19_bn": 20_303_178,
    "alexnet": 3_771_210,
}


def test_every_architecture_has_an_expected_count() -> None:
    assert set(EXPECTED_PARAMS) == set(list_architectures())


@pytest.mark.parametrize("arch", list(EXPECTED_PARAMS))
def test_parameter_count_and_forward_shape(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch).eval()
    assert count_parameters(model) == EXPECTED_PARAMS[arch]
    c, h, w = model_input_shape(arch)
    with torch.no_grad():
        out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_students_are_about_four_times_smaller() -> None:
    for student, spec in ((n, s) for n, s in ARCHITECTURES.items() if s.student_of):
        ratio = EXPECTED_PARAMS[spec.student_of] / EXPECTED_PARAMS[student]
        assert 3.5 < ratio < 4.5, (student, ratio)


@pytest.mark.parametrize(
    ("arch", "channels", "size", "classes"),
    [
        ("simple-mnist", 3, 32, 5),
        ("simple-cifar", 1, 28, 10),
        ("lenet5", 1, 32, 10),
        ("lenet-300-100", 3, 32, 7),
        ("resnet18", 1, 28, 10),
        ("mobilenet_v3_small", 1, 28, 3),
        ("vgg11", 1, 28, 10),
        ("alexnet", 1, 28, 10),
    ],
)
def test_overrides_change_input_and_output(arch: str, channels: int, size: int, classes: int) -> None:
    model = build_model(arch, num_classes=classes, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, size, size)).shape == (1, classes)
    assert model_input_shape(arch, channels, size) == (channels, size, size)


def test_simple_models_size_fc_from_image_size() -> None:
    assert count_parameters(build_model("simple-mnist", image_size=32)) == 421_642 + 64 * (8 * 8 - 7 * 7) * 128
    assert count_parameters(build_model("lenet-300-100", in_channels=3, image_size=32)) == 3 * 32 * 32 * 300 + 300 + 30_100 + 1_010


def test_small_input_stems() -> None:
    small = build_model("resnet18")
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    large = build_model("resnet18", image_size=224)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert build_model("mobilenet_v3_small").features[0][0].stride == (1, 1)
    assert build_model("mobilenet_v3_small", image_size=224).features[0][0].stride == (2, 2)
    assert build_model("alexnet").features[0].kernel_size == (3, 3)


def test_unknown_architecture_lists_choices() -> None:
    with pytest.raises(InputError, match="Unknown architecture 'resnet9000'.*simple-mnist"):
        build_model("resnet9000")
    with pytest.raises(InputError, match="Unknown architecture"):
        model_input_shape("nope")


def test_pretrained_is_refused_offline() -> None:
    with pytest.raises(InputError, match="never downloads"):
        build_model("resnet18", pretrained=True)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": -1}, {"image_size": 2.5}, {"num_classes": True}])
def test_bad_sizes_are_input_errors(kwargs: dict) -> None:
    with pytest.raises(InputError):
        build_model("simple-mnist", **kwargs)


@pytest.mark.parametrize(("arch", "size"), [("simple-cifar", 4), ("vgg11", 15), ("alexnet", 14), ("lenet5", 8)])
def test_too_small_images_are_input_errors(arch: str, size: int) -> None:
    with pytest.raises(InputError, match="too small"):
        build_model(arch, image_size=size)


def test_listing_architectures_does_not_import_torch() -> None:
    code = (
        "import sys; from modelport.models import list_architectures; "
        "assert 'simple-mnist' in list_architectures(); "
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_simple_mnist_exports_to_onnx_with_dynamo(tmp_path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model("simple-mnist").eval()
    x = torch.randn(2, 1, 28, 28)
    path = tmp_path / "simple-mnist.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
