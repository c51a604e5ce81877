"""ONNX Runtime converter: FP32 offline optimisation and static INT8 (QDQ, QOperator), real ORT sessions."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.agreement import compare
from modelport.export.onnx import export_onnx, reference_outputs, run_onnx, validate_onnx
from modelport.backends.onnxruntime.convert import OnnxRuntimeConverter
from modelport.core.files import sha256_file
from modelport.core.profiles import DeviceProfile, get_profile
from modelport.core.types import Format, Precision, Status
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError, InputError
from tiny_models import MeanPoolEmbedder, digits_images, train_tiny_cnn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    x, y = digits_images()
    model = train_tiny_cnn(x[:1400], y[:1400])
    art = export_onnx(model, {"input": torch.from_numpy(x[:1])}, tmp_path_factory.mktemp("src") / "model.onnx")
    calibration = Feeds.from_array(x[:100], input_name="input", batch_size=1, limit=100)
    evaluation = Feeds.from_array(x[1400:], y[1400:], input_name="input", batch_size=50)
    return model, art, calibration, evaluation


def _profile(**options) -> DeviceProfile:
    static = options.pop("static_batch", None)
    base = get_profile("legacy-cpu")
    return dataclasses.replace(base, options=options, static_batch=static)


def test_availability() -> None:
    import onnxruntime

    assert OnnxRuntimeConverter().availability() == (True, onnxruntime.__version__)


def test_fp32_optimised_model_loads_and_validates(setup, tmp_path: Path) -> None:
    model, art, _, evaluation = setup
    out = OnnxRuntimeConverter().convert(art, _profile(), Precision.FP32, calibration=None, out_dir=tmp_path)
    assert out.path == tmp_path / "model.onnx" and sorted(os.listdir(tmp_path)) == ["model.onnx"]
    assert out.format is Format.ONNX and out.precision is Precision.FP32 and out.status is Status.EXPORTED
    assert out.profile == "legacy-cpu" and out.parent_sha256 == art.sha256 and out.sha256 == sha256_file(out.path)
    assert out.details["optimization"] == "extended" and "onnxruntime" in out.tools and "torch" in out.tools
    assert out.inputs == art.inputs and out.outputs == art.outputs
    ops = {(n.domain, n.op_type) for n in onnx.load(str(out.path)).graph.node}
    assert ("com.microsoft", "FusedConv") in ops  # Conv+Relu fused offline: the extended level really ran
    result = validate_onnx(out, model, evaluation)
    assert result.status is Status.VALIDATED, result.status_text


@pytest.mark.parametrize(
    ("options", "marker_op"),
    [
        ({"int8_format": "qdq"}, "QuantizeLinear"),
        ({"int8_format": "qoperator", "int8_reduce_range": True}, "QLinearConv"),
    ],
    ids=["qdq", "qoperator-reduce-range"],
)
def test_int8_agrees_with_torch(setup, tmp_path: Path, options: dict, marker_op: str) -> None:
    model, art, calibration, evaluation = setup
    out = OnnxRuntimeConverter().convert(
        art, _profile(**options), Precision.INT8, calibration=calibration, out_dir=tmp_path
    )
    assert out.precision is Precision.INT8 and out.size_bytes < art.size_bytes * 0.6
    d = out.details
    from modelport.core.cpu import cpu_info

    # not given: 7-bit weights exactly where this machine (the profile declares no target CPU) lacks VNNI
    assert d["format"] == options["int8_format"]
    assert d["reduce_range"] == options.get("int8_reduce_range", not cpu_info().vnni)
    assert d["int8_options"]["sources"]["quant_format"].startswith("profile")
    assert d["per_channel"] is True and d["calibration_method"] == "minmax" and d["calibration_samples"] == 100
    assert marker_op in {n.op_type for n in onnx.load(str(out.path)).graph.node}

    reference = reference_outputs(model, evaluation)
    ref_classes = np.concatenate(reference).argmax(1)
    assert len(np.unique(ref_classes)) == 10  # a meaningful check: every class predicted
    assert np.mean(ref_classes == np.concatenate(evaluation.labels)) > 0.8  # the model is trained
    agreement = compare(reference, run_onnx(out.path, evaluation))
    assert agreement.finite and agreement.top1_agreement is not None and agreement.top1_agreement >= 0.9
    assert agreement.max_abs_diff > 0  # it really is quantised


def test_int8_needs_calibration(setup, tmp_path: Path) -> None:
    _, art, _, _ = setup
    for empty in (None, Feeds(batches=())):
        with pytest.raises(ConversionError, match="needs calibration data"):
            OnnxRuntimeConverter().convert(art, _profile(), Precision.INT8, calibration=empty, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_fp16_is_not_offered(setup, tmp_path: Path) -> None:
    _, art, _, _ = setup
    with pytest.raises(ConversionError, match="FP16 is not offered for ONNX Runtime on CPU"):
        OnnxRuntimeConverter().convert(art, _profile(), Precision.FP16, calibration=None, out_dir=tmp_path)


def test_unknown_int8_format(setup, tmp_path: Path) -> None:
    _, art, calibration, _ = setup
    with pytest.raises(InputError, match="int8_format 'qint4'"):
        OnnxRuntimeConverter().convert(
            art, _profile(int8_format="qint4"), Precision.INT8, calibration=calibration, out_dir=tmp_path
        )
    assert not (tmp_path / "model.onnx").exists()


def test_static_batch_fixes_the_batch_dimension(setup, tmp_path: Path) -> None:
    model, art, calibration, evaluation = setup
    profile = _profile(int8_format="qdq", static_batch=1)
    # calibration given in batches of 4 is regrouped to the static batch
    cal4 = Feeds.from_array(np.concatenate([b["input"] for b in calibration]), input_name="input", batch_size=4)
    out = OnnxRuntimeConverter().convert(art, profile, Precision.INT8, calibration=cal4, out_dir=tmp_path / "i8")
    assert out.inputs[0].shape == (1, 1, 28, 28) and out.outputs[0].shape == (1, 10)
    assert out.details["calibration_batches"] == 100 and out.details["static_batch"] == 1
    fp32 = OnnxRuntimeConverter().convert(art, profile, Precision.FP32, calibration=None, out_dir=tmp_path / "f32")
    assert fp32.inputs[0].shape == (1, 1, 28, 28)
    one = Feeds(batches=tuple({"input": evaluation.batches[0]["input"][i : i + 1]} for i in range(5)))
    assert validate_onnx(fp32, model, one).status is Status.VALIDATED


def test_two_int64_inputs_static_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MeanPoolEmbedder().eval()
    example = {"input_ids": torch.randint(0, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.int64)}
    art = export_onnx(model, example, tmp_path / "src" / "text.onnx")
    out = OnnxRuntimeConverter().convert(
        art, _profile(static_batch=2), Precision.FP32, calibration=None, out_dir=tmp_path / "ort"
    )
    assert {(t.name, t.shape, t.dtype) for t in out.inputs} == {
        ("input_ids", (2, 7), "int64"), ("attention_mask", (2, 7), "int64")
    }
    feeds = Feeds(batches=({"input_ids": example["input_ids"].numpy(), "attention_mask": example["attention_mask"].numpy()},))
    assert validate_onnx(out, model, feeds).status is Status.VALIDATED


def test_refuses_to_overwrite_its_source(setup) -> None:
    _, art, _, _ = setup
    with pytest.raises(ConversionError, match="overwrite the source"):
        OnnxRuntimeConverter().convert(art, _profile(), Precision.FP32, calibration=None, out_dir=art.path.parent)
