"""OpenVINO converter: FP32/FP16 IR sizes, NNCF INT8, static-batch reshape; real OpenVINO compiles on CPU."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.agreement import compare
from modelport.export.onnx import export_onnx, onnx_artifact_from_file, reference_outputs
from modelport.backends.openvino.convert import OpenVinoConverter
from modelport.core.files import sha256_files
from modelport.core.profiles import DeviceProfile, get_profile
from modelport.core.types import Format, Precision, Status
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError
from tiny_models import MeanPoolEmbedder, digits_images, train_tiny_cnn

ov = pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    x, y = digits_images()
    model = train_tiny_cnn(x[:1400], y[:1400])
    art = export_onnx(model, {"input": torch.from_numpy(x[:1])}, tmp_path_factory.mktemp("src") / "model.onnx")
    calibration = Feeds.from_array(x[:64], input_name="input", batch_size=1)
    evaluation = Feeds.from_array(x[1400:1600], y[1400:1600], input_name="input", batch_size=50)
    n_params = sum(p.numel() for p in model.parameters())
    return model, art, calibration, evaluation, n_params


@pytest.fixture(scope="module")
def fp32_ir(setup, tmp_path_factory: pytest.TempPathFactory):
    _, art, _, _, _ = setup
    return OpenVinoConverter().convert(
        art, get_profile("intel-cpu"), Precision.FP32, calibration=None, out_dir=tmp_path_factory.mktemp("fp32")
    )


def _profile(name: str = "intel-cpu", **changes) -> DeviceProfile:
    return dataclasses.replace(get_profile(name), **changes)


def _run_ir(path: Path, feeds: Feeds) -> list[np.ndarray]:
    # f32 inference precision: the CPU plugin's default on AVX512-BF16/AMX CPUs is bf16, which is not what is tested here
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [compiled(feed)[0] for feed in feeds]


def test_availability() -> None:
    assert OpenVinoConverter().availability() == (True, ov.__version__)


def test_fp32_ir_is_not_compressed_and_agrees(setup, fp32_ir) -> None:
    model, art, _, evaluation, n_params = setup
    ir = fp32_ir
    folder = ir.path.parent
    assert sorted(os.listdir(folder)) == ["model.bin", "model.xml"]  # no temporary folder left behind
    assert ir.format is Format.OPENVINO_IR and ir.precision is Precision.FP32 and ir.status is Status.EXPORTED
    assert ir.files == ("model.xml", "model.bin") and ir.path.name == "model.xml"
    assert ir.sha256 == sha256_files([folder / "model.xml", folder / "model.bin"])
    assert ir.size_bytes == (folder / "model.xml").stat().st_size + (folder / "model.bin").stat().st_size
    assert 3.9 <= (folder / "model.bin").stat().st_size / n_params <= 4.2  # float32 weights, not fp16
    assert ir.details["compress_to_fp16"] is False and ir.details["static_batch"] is None
    assert ir.parent_sha256 == art.sha256 and ir.profile == "intel-cpu"
    assert {"openvino", "nncf", "torch"} <= set(ir.tools)
    assert [(t.name, t.shape, t.dtype) for t in ir.inputs] == [("input", ("batch", 1, 28, 28), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in ir.outputs] == [("output", ("batch", 10), "float32")]
    agreement = compare(reference_outputs(model, evaluation), _run_ir(ir.path, evaluation))
    assert agreement.allclose_fp32, agreement


def test_fp16_ir_halves_the_weights(setup, fp32_ir, tmp_path: Path) -> None:
    model, art, _, evaluation, n_params = setup
    ir = OpenVinoConverter().convert(art, _profile(), Precision.FP16, calibration=None, out_dir=tmp_path)
    assert 1.9 <= (tmp_path / "model.bin").stat().st_size / n_params <= 2.2
    assert ir.precision is Precision.FP16 and ir.details["compress_to_fp16"] is True
    assert ir.inputs[0].dtype == "float32"  # compressed weights, float32 interface
    agreement = compare(reference_outputs(model, evaluation), _run_ir(ir.path, evaluation))
    assert agreement.cosine >= 0.999


def test_int8_is_smaller_and_agrees(setup, fp32_ir, tmp_path: Path) -> None:
    model, art, calibration, evaluation, _ = setup
    ir = OpenVinoConverter().convert(art, _profile(), Precision.INT8, calibration=calibration, out_dir=tmp_path)
    assert ir.precision is Precision.INT8
    assert (tmp_path / "model.bin").stat().st_size < 0.5 * (fp32_ir.path.parent / "model.bin").stat().st_size
    d = ir.details
    assert d["nncf_preset"] == "performance" and d["calibration_samples"] == 64 and d["compress_to_fp16"] is False
    reference = reference_outputs(model, evaluation)
    ref_classes = np.concatenate(reference).argmax(1)
    assert len(np.unique(ref_classes)) == 10 and np.mean(ref_classes == np.concatenate(evaluation.labels)) > 0.8
    agreement = compare(reference, _run_ir(ir.path, evaluation))
    assert agreement.top1_agreement is not None and agreement.top1_agreement >= 0.9
    assert agreement.max_abs_diff > 0


def test_int8_needs_calibration(setup, tmp_path: Path) -> None:
    _, art, _, _, _ = setup
    with pytest.raises(ConversionError, match="needs calibration data"):
        OpenVinoConverter().convert(art, _profile(), Precision.INT8, calibration=None, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_static_batch_for_npu(setup, tmp_path: Path) -> None:
    model, art, calibration, evaluation, _ = setup
    profile = get_profile("core-ultra-npu")  # static_batch = 1; no NPU needed to produce the IR
    assert profile.static_batch == 1
    ir = OpenVinoConverter().convert(art, profile, Precision.FP16, calibration=None, out_dir=tmp_path / "fp16")
    read = ov.Core().read_model(str(ir.path))
    assert not read.is_dynamic()
    assert ir.inputs[0].shape == (1, 1, 28, 28) and ir.outputs[0].shape == (1, 10)
    assert ir.details["static_batch"] == 1

    # calibration data in batches of 8 is regrouped into the static batch
    cal8 = Feeds.from_array(np.concatenate([b["input"] for b in calibration]), input_name="input", batch_size=8)
    q = OpenVinoConverter().convert(art, profile, Precision.INT8, calibration=cal8, out_dir=tmp_path / "int8")
    assert not ov.Core().read_model(str(q.path)).is_dynamic()
    assert q.details["calibration_batches"] == 64 and q.details["nncf_target_device"] == "NPU"
    one = Feeds(batches=tuple({"input": evaluation.batches[0]["input"][i : i + 1]} for i in range(20)))
    agreement = compare(reference_outputs(model, one), _run_ir(q.path, one))
    assert agreement.top1_agreement is not None and agreement.top1_agreement >= 0.9


def test_static_batch_refuses_other_dynamic_dims(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "seq.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    art = onnx_artifact_from_file(path)
    assert art.inputs[0].shape == ("batch", "L")
    with pytest.raises(ConversionError, match="still has dynamic dimensions"):
        OpenVinoConverter().convert(art, _profile(static_batch=1), Precision.FP16, calibration=None,
                                    out_dir=tmp_path / "ir")
    assert not (tmp_path / "ir" / "model.xml").exists()


def test_two_int64_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MeanPoolEmbedder().eval()
    example = {"input_ids": torch.randint(0, 100, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.int64)}
    art = export_onnx(model, example, tmp_path / "src" / "text.onnx")
    ir = OpenVinoConverter().convert(art, _profile(), Precision.FP32, calibration=None, out_dir=tmp_path / "ir")
    assert {(t.name, t.shape, t.dtype) for t in ir.inputs} == {
        ("input_ids", ("batch", 7), "int64"), ("attention_mask", ("batch", 7), "int64")
    }
    feeds = Feeds(batches=({k: v.numpy() for k, v in example.items()},))
    agreement = compare(reference_outputs(model, feeds), _run_ir(ir.path, feeds))
    assert agreement.allclose_fp32
