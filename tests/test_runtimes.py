"""Real ONNX Runtime, OpenVINO and PyTorch sessions on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, IN_FEATURES, LinearModel, artifact_for
from modelport.core.types import Artifact, Format, Precision, TensorSpec
from modelport.errors import InferenceInputError, InputError, RuntimeUnavailableError
from modelport.backends import get_runtime
from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime
from modelport.backends.openvino.runtime import OpenVinoRuntime
from modelport.backends.torch.runtime import TorchEagerRuntime, register_module, unregister_module

# ---------------------------------------------------------------- ONNX Runtime


def test_registry_names_resolve_to_these_classes() -> None:
    assert isinstance(get_runtime("onnxruntime"), OnnxRuntimeRuntime)
    assert isinstance(get_runtime("openvino"), OpenVinoRuntime)
    assert isinstance(get_runtime("torch"), TorchEagerRuntime)


def test_onnxruntime_availability_and_devices() -> None:
    rt = OnnxRuntimeRuntime()
    ok, version = rt.availability()
    assert ok and version[0].isdigit()
    assert rt.devices()[0] == "CPU"


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_infer_shapes_and_values(linear_onnx: LinearModel, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, IN_FEATURES)).astype(np.float32)
    with OnnxRuntimeRuntime().load(artifact_for(linear_onnx.path), threads=1) as session:
        (out,) = session.infer({"input": x})
    assert out.shape == (batch, CLASSES)
    np.testing.assert_allclose(out, linear_onnx.forward(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("feed", "words"),
    [
        ({"x": np.zeros((1, 4), np.float32)}, ["missing ['input']", "unexpected ['x']"]),
        ({"input": np.zeros((4,), np.float32)}, ["rank 1", "rank 2"]),
        ({"input": np.zeros((1, 5), np.float32)}, ["axis 1", "expects 4"]),
        ({"input": np.zeros((1, 4), np.float64)}, ["float64", "float32"]),
        ({"input": np.full((1, 4), np.nan, np.float32)}, ["NaN"]),
        ({"input": [[0.0] * 4]}, ["numpy array"]),
    ],
)
def test_infer_rejects_bad_feeds_with_clear_messages(linear_onnx: LinearModel, feed: dict, words: list[str]) -> None:
    with OnnxRuntimeRuntime().load(artifact_for(linear_onnx.path)) as session:
        with pytest.raises(InferenceInputError) as info:
            session.infer(feed)
    for word in words:
        assert word in str(info.value)


def test_infer_on_closed_session_is_refused(linear_onnx: LinearModel) -> None:
    session = OnnxRuntimeRuntime().load(artifact_for(linear_onnx.path))
    with pytest.raises(InferenceInputError, match="not open"):
        session.infer({"input": np.zeros((1, 4), np.float32)})


def test_onnxruntime_refuses_other_formats_and_absent_devices(linear_onnx: LinearModel, linear_ir: Path) -> None:
    rt = OnnxRuntimeRuntime()
    with pytest.raises(InputError, match="cannot load a 'openvino-ir'"):
        rt.load(artifact_for(linear_ir, Format.OPENVINO_IR))
    if "CUDA" not in rt.devices():
        with pytest.raises(RuntimeUnavailableError, match=r"\['CPU'\]"):
            rt.load(artifact_for(linear_onnx.path), device="CUDA")
    with pytest.raises(InputError, match="threads"):
        rt.load(artifact_for(linear_onnx.path), threads=0)


# ---------------------------------------------------------------- OpenVINO


@pytest.mark.openvino
def test_openvino_ir_fp32_runs_in_f32_with_threads(linear_onnx: LinearModel, linear_ir: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, IN_FEATURES)).astype(np.float32)
    art = artifact_for(linear_ir, Format.OPENVINO_IR, files=("linear.bin",))
    with OpenVinoRuntime().load(art, threads=1) as session:
        out = session.infer({"input": x})
        again = session.infer({"input": x[:1]})
        assert session.config["INFERENCE_PRECISION_HINT"] == "f32"
        assert session.inference_precision == "f32"
        assert session._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert [o.shape for o in out] == [(3, CLASSES)]
    assert again[0].shape == (1, CLASSES)
    np.testing.assert_allclose(out[0], linear_onnx.forward(x), rtol=1e-5, atol=1e-5)
    assert not session.notes


@pytest.mark.openvino
def test_openvino_records_plugin_precision_for_non_fp32(linear_ir: Path) -> None:
    art = artifact_for(linear_ir, Format.OPENVINO_IR, Precision.FP16)
    with OpenVinoRuntime().load(art) as session:
        out = session.infer({"input": np.ones((2, IN_FEATURES), np.float32)})
    assert "INFERENCE_PRECISION_HINT" not in session.config
    assert out[0].shape == (2, CLASSES)
    assert session.inference_precision
    assert any("plugin default" in n and session.inference_precision in n for n in session.notes)


@pytest.mark.openvino
def test_openvino_loads_onnx_too(linear_onnx: LinearModel) -> None:
    x = np.ones((2, IN_FEATURES), np.float32)
    with OpenVinoRuntime().load(artifact_for(linear_onnx.path)) as session:
        (out,) = session.infer({"input": x})
    np.testing.assert_allclose(out, linear_onnx.forward(x), rtol=1e-5, atol=1e-5)


@pytest.mark.openvino
def test_openvino_absent_device_lists_devices(linear_ir: Path) -> None:
    rt = OpenVinoRuntime()
    seen = rt.devices()
    assert "CPU" in seen
    if "NPU" in seen:
        pytest.skip("this machine has an NPU")
    with pytest.raises(RuntimeUnavailableError) as info:
        rt.load(artifact_for(linear_ir, Format.OPENVINO_IR, Precision.INT8), device="NPU")
    assert "NPU" in str(info.value) and "CPU" in str(info.value)


# ---------------------------------------------------------------- PyTorch eager


def _pt_artifact(sha: str, inputs: tuple[TensorSpec, ...], **details: object) -> Artifact:
    return Artifact(
        path=Path("/nonexistent/model.safetensors"), format=Format.PYTORCH, precision=Precision.FP32, inputs=inputs,
        outputs=(), profile=None, sha256=sha, details=dict(details),
    )


def test_torch_registered_module_runs_and_restores_state() -> None:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(IN_FEATURES, CLASSES)
    module.train()
    register_module("sha-linear", module)
    try:
        before = torch.get_num_threads()
        x = np.random.default_rng(0).standard_normal((5, IN_FEATURES)).astype(np.float32)
        art = _pt_artifact("sha-linear", (TensorSpec("input", ("batch", IN_FEATURES)),))
        with TorchEagerRuntime().load(art, threads=1) as session:
            assert torch.get_num_threads() == 1
            assert not module.training
            (out,) = session.infer({"input": x})
        assert torch.get_num_threads() == before
        assert module.training  # given back as it came
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    finally:
        unregister_module("sha-linear")


def test_torch_multi_input_kwargs_and_dict_outputs() -> None:
    import torch

    class Two(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, object]:
            return {"sum": a + b, "pair": (a * b, a - b)}

    TorchEagerRuntime.register_module("sha-two", Two())
    try:
        art = _pt_artifact("sha-two", (TensorSpec("b", ("batch", 2)), TensorSpec("a", ("batch", 2))))
        a = np.array([[1.0, 2.0]], np.float32)
        b = np.array([[10.0, 20.0]], np.float32)
        with TorchEagerRuntime().load(art) as session:
            outs = session.infer({"a": a, "b": b})
        assert [o.tolist() for o in outs] == [[[11.0, 22.0]], [[10.0, 40.0]], [[-9.0, -18.0]]]
    finally:
        unregister_module("sha-two")


def test_torch_without_module_or_arch_explains() -> None:
    art = _pt_artifact("unknown-sha", (TensorSpec("input", (1, 4)),))
    session = TorchEagerRuntime().load(art)
    with pytest.raises(RuntimeUnavailableError, match="register_module"):
        session.__enter__()
    assert TorchEagerRuntime().devices()[0] == "CPU"


def test_torch_rebuilds_from_arch_and_safetensors(tmp_path: Path) -> None:
    try:
        from modelport.models import build_model

        model = build_model("lenet-300-100", num_classes=10, in_channels=1, image_size=28)
    except (ImportError, AttributeError) as exc:  # models/ is written by another helper
        pytest.skip(f"modelport.models.build_model not available: {exc}")
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "lenet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    art = Artifact(
        path=path, format=Format.PYTORCH, precision=Precision.FP32, inputs=(TensorSpec("input", ("batch", 1, 28, 28)),),
        outputs=(), details={"arch": "lenet-300-100", "model_kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 28}},
    )
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with TorchEagerRuntime().load(art) as session:
        (out,) = session.infer({"input": x})
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
