"""Quantization steps: checked settings, and every setting changing the real artifact (ONNX Runtime, OpenVINO, NNCF).

A tiny CNN trained for a few seconds on the embedded digits dataset; real quantizers, real runtimes.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.backends.lowering import Lowering
from modelport.compression import CompressionData, StepStage, get_step
from modelport.export.onnx import export_onnx
from modelport.backends.onnxruntime.convert import OnnxRuntimeConverter
from modelport.backends.openvino.convert import OpenVinoConverter, float_operations
from modelport.core.profiles import get_profile
from modelport.core.types import Artifact, Precision
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError, InputError
from tiny_models import TinyCNN

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")



@contextlib.contextmanager
def _one_thread():
    """Train single-threaded: on a shared 2-core machine torch's thread pool is ~5× slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from modelport.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits) -> TinyCNN:
    from modelport.training import train

    torch.manual_seed(0)
    model = TinyCNN()
    with _one_thread():
        report = train(model, digits, epochs=6, lr=3e-3, progress=False)
    assert report.test_accuracy > 0.9  # a real classifier, so accuracy drops mean something
    return model.eval()


@pytest.fixture(scope="module")
def onnx_art(trained, tmp_path_factory) -> Artifact:
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_onnx(trained, {"input": torch.zeros(2, 1, 28, 28)}, path)


@pytest.fixture(scope="module")
def calibration(digits) -> Feeds:
    return digits.calibration_feeds(64, batch_size=8)


@pytest.fixture(scope="module")
def validation(digits) -> Feeds:
    return digits.eval_feeds(batch_size=60)


def _lowering(step: str, **params) -> dict:
    outcome = get_step(step, params).apply(TinyCNN(), CompressionData())
    return outcome.lowering


def _ort(onnx_art, calibration, tmp_path, name, precision=Precision.INT8, **params):
    options = _lowering("quantize", **params)
    out = OnnxRuntimeConverter().convert(
        onnx_art, get_profile("legacy-cpu"), precision, calibration=calibration, out_dir=tmp_path / name,
        options=options,
    )
    return out, onnx.load(str(out.path))


def _ops(proto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def _accuracy_ort(path: Path, feeds: Feeds) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = sum(int((sess.run(None, {name: b["input"]})[0].argmax(1) == y).sum()) for b, y in zip(feeds, feeds.labels))
    return correct / feeds.num_samples


def _accuracy_ov(xml: Path, feeds: Feeds) -> float:
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    correct = sum(int((compiled(b)[0].argmax(1) == y).sum()) for b, y in zip(feeds, feeds.labels))
    return correct / feeds.num_samples


# ------------------------------------------------------------------------------------------- parameter checks


def test_lowering_dict_holds_only_given_settings_in_converter_keys():
    step = get_step("quantize", {"quant_format": "QOperator", "calibrate_method": "MinMax", "reduce_range": True,
                                 "ignored_scope": {"patterns": ["node_linear.*"]}})
    assert step.stage is StepStage.LOWERING
    model = TinyCNN()
    outcome = step.apply(model, CompressionData())
    assert outcome.model is model  # a lowering step leaves the module alone
    assert outcome.lowering == {
        "step": "quantize",
        "precision": "int8",
        "quantization": {"ignored_scope": {"patterns": ["node_linear.*"]}, "quant_format": "qoperator",
                         "calibrate_method": "minmax", "reduce_range": True},
    }
    acc = get_step("quantize-accuracy", {"max_drop": 0.005, "preset": "mixed"}).apply(model, CompressionData())
    assert acc.lowering["quantization"] == {"max_drop": 0.005, "drop_type": "absolute", "preset": "mixed"}
    assert get_step("qat").stage is StepStage.MODEL


@pytest.mark.parametrize(
    ("step", "params", "words"),
    [
        ("quantize", {"quant_format": "qxd"}, "quant_format must be one of"),
        ("quantize", {"precision": "int4"}, "precision must be one of"),
        ("quantize", {"mode": "dynamic", "quant_format": "qdq"}, "static quantization only"),
        ("quantize", {"mode": "dynamic", "calibrate_method": "entropy"}, "calibrate_method cannot apply"),
        ("quantize", {"mode": "dynamic", "activation_type": "int8"}, "activation_type = 'int8'"),
        ("quantize", {"precision": "fp16", "per_channel": True}, "per_channel: int8 settings"),
        ("quantize", {"activation_type": "int8", "weight_type": "uint8"}, "no ONNX Runtime kernels"),
        ("quantize", {"subset_size": 0}, "subset_size must be ≥ 1"),
        ("quantize", {"subset_size": 2.5}, "subset_size must be"),
        ("quantize", {"ignored_scope": {"name": ["x"]}}, "ignored_scope has no key 'name'"),
        ("quantize", {"ignored_scope": {"patterns": ["("]}}, "not a regular expression"),
        ("quantize", {"ignored_scope": {}}, "ignored_scope is empty"),
        ("quantize", {"presets": "mixed"}, "has no parameter 'presets'"),
        ("quantize-accuracy", {"max_drop": 1.0}, "max_drop must be in (0, 1)"),
        ("quantize-accuracy", {"drop_type": "percent"}, "drop_type must be one of"),
        ("qat", {"epochs": 0}, "epochs must be ≥ 1"),
        ("qat", {"lr": 2.0}, "lr must be in (0, 1)"),
    ],
)
def test_bad_settings_are_input_errors_naming_the_step(step, params, words):
    with pytest.raises(InputError) as info:
        get_step(step, params)
    assert f"'{step}'" in info.value.message
    assert words in info.value.message
    assert info.value.fix


# ------------------------------------------------------------------------------------------------ ONNX Runtime


def test_ort_qdq_and_qoperator_write_different_graphs(onnx_art, calibration, tmp_path):
    qdq, qdq_proto = _ort(onnx_art, calibration, tmp_path, "qdq", quant_format="qdq")
    qop, qop_proto = _ort(onnx_art, calibration, tmp_path, "qop", quant_format="qoperator")
    assert _ops(qdq_proto)["DequantizeLinear"] >= 3 and _ops(qdq_proto)["Conv"] == 2
    assert "QLinearConv" not in _ops(qdq_proto)
    assert _ops(qop_proto)["QLinearConv"] == 2 and "Conv" not in _ops(qop_proto)
    assert qdq.details["format"] == "qdq" and qop.details["format"] == "qoperator"
    assert qdq.details["lowering"]["settings"] == {"quant_format": "qdq"}


def test_ort_per_channel_reduce_range_and_calibration_are_applied(onnx_art, calibration, tmp_path, digits):
    per, per_proto = _ort(onnx_art, calibration, tmp_path, "pc", quant_format="qdq", per_channel=True,
                          reduce_range=True, calibrate_method="entropy", subset_size=24)
    flat, flat_proto = _ort(onnx_art, calibration, tmp_path, "pt", quant_format="qdq", per_channel=False)

    def conv_weight_scales(proto):
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
        dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in weights]
        return [inits[n.input[1]].shape for n in dq]

    assert conv_weight_scales(per_proto) == [(8,), (16,)]  # one scale per output channel
    assert conv_weight_scales(flat_proto) == [(), ()]
    assert per.details["reduce_range"] is True and flat.details["reduce_range"] is True  # legacy-cpu's profile key
    assert per.details["calibration_method"] == "entropy" and flat.details["calibration_method"] == "minmax"
    assert per.details["calibration_samples"] == 24 and flat.details["calibration_samples"] == 64
    # reduce_range: 7-bit weights, so every INT8 weight lies in [-64, 63]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in per_proto.graph.initializer}
    q_weights = [inits[n.input[0]] for n in per_proto.graph.node
                 if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim > 1]
    assert q_weights and max(int(np.abs(w).max()) for w in q_weights) <= 64
    assert _accuracy_ort(per.path, digits.eval_feeds(batch_size=90)) > 0.85


def test_ort_ignored_scope_keeps_that_layer_fp32_and_dynamic_writes_integer_ops(onnx_art, calibration, tmp_path):
    out, proto = _ort(onnx_art, calibration, tmp_path, "ign", quant_format="qoperator",
                      ignored_scope={"types": ["Gemm"]})
    assert _ops(proto)["Gemm"] == 1 and _ops(proto)["QLinearConv"] == 2
    assert len(out.details["nodes_excluded"]) == 1
    dyn, dproto = _ort(onnx_art, None, tmp_path, "dyn", mode="dynamic")
    assert _ops(dproto)["ConvInteger"] == 2 and _ops(dproto)["DynamicQuantizeLinear"] >= 1
    assert dyn.details["quantizer"] == "onnxruntime.quantization.quantize_dynamic"
    with pytest.raises(ConversionError, match="matches no node"):
        _ort(onnx_art, calibration, tmp_path, "bad", ignored_scope={"patterns": ["no_such_layer.*"]})


def test_ort_refuses_accuracy_control_and_notes_other_runtime_or_precision(onnx_art, calibration, tmp_path):
    with pytest.raises(ConversionError, match="OpenVINO-only"):
        OnnxRuntimeConverter().convert(onnx_art, get_profile("legacy-cpu"), Precision.INT8, calibration=calibration,
                                       out_dir=tmp_path / "acc", options=_lowering("quantize-accuracy"))
    out, _ = _ort(onnx_art, calibration, tmp_path, "note", preset="mixed", quant_format="qdq")
    assert out.details["lowering"]["notes"] == ["not applicable to onnxruntime, ignored: preset"]
    fp32, _ = _ort(onnx_art, calibration, tmp_path, "fp32", precision=Precision.FP32, quant_format="qdq")
    assert "were not applied to this fp32 artifact" in fp32.details["lowering"]["notes"][0]
    assert "quantizer" not in fp32.details


# ---------------------------------------------------------------------------------------------------- OpenVINO


def test_openvino_ignored_scope_layer_stays_fp32_in_the_ir(onnx_art, calibration, tmp_path):
    profile = get_profile("intel-cpu")
    plain = OpenVinoConverter().convert(onnx_art, profile, Precision.INT8, calibration=calibration,
                                        out_dir=tmp_path / "plain", options=_lowering("quantize", subset_size=16))
    assert plain.details["fp32_operations"] == [] and plain.details["calibration_samples"] == 16
    options = _lowering("quantize", preset="mixed", ignored_scope={"types": ["MatMul"]}, fast_bias_correction=False)
    ir = OpenVinoConverter().convert(onnx_art, profile, Precision.INT8, calibration=calibration,
                                     out_dir=tmp_path / "ign", options=options)
    model = ov.Core().read_model(str(ir.path))
    matmuls = sorted(op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul")
    assert len(matmuls) == 1
    assert float_operations(model) == matmuls == ir.details["fp32_operations"]  # read back from the saved IR
    assert ir.details["nncf_preset"] == "mixed" and ir.details["fast_bias_correction"] is False
    with pytest.raises(ConversionError, match="only ONNX Runtime"):
        OpenVinoConverter().convert(onnx_art, profile, Precision.INT8, calibration=calibration,
                                    out_dir=tmp_path / "dyn", options=_lowering("quantize", mode="dynamic"))
    with pytest.raises(ConversionError, match="ignored_scope"):
        OpenVinoConverter().convert(onnx_art, profile, Precision.INT8, calibration=calibration, out_dir=tmp_path / "x",
                                    options=_lowering("quantize", ignored_scope={"names": ["no_such_op"]}))


def test_accuracy_control_meets_max_drop_on_digits(onnx_art, calibration, validation, tmp_path):
    options = Lowering.from_dict(_lowering("quantize-accuracy", max_drop=0.003), validation=validation)
    ir = OpenVinoConverter().convert(onnx_art, get_profile("intel-cpu"), Precision.INT8, calibration=calibration,
                                     out_dir=tmp_path / "acc", options=options)
    report = ir.details["accuracy_control"]
    assert ir.details["quantizer"] == "nncf.quantize_with_accuracy_control"
    assert report["met"] and report["drop"] <= 0.003 and report["validation_samples"] == validation.num_samples
    # measured again here, on the IR as written: FP32 ONNX in OpenVINO vs the INT8 IR
    fp32 = ov.Core().compile_model(ov.convert_model(str(onnx_art.path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    from modelport.backends.openvino.convert import top1_metric

    before = top1_metric(fp32, list(zip(validation.batches, validation.labels)))
    assert before == pytest.approx(report["fp32_accuracy"])
    assert before - _accuracy_ov(ir.path, validation) <= 0.003 + 1e-9
    assert set(report["reverted_to_fp32"]) == set(ir.details["fp32_operations"])
    with pytest.raises(ConversionError, match="labelled validation data"):
        OpenVinoConverter().convert(onnx_art, get_profile("intel-cpu"), Precision.INT8, calibration=calibration,
                                    out_dir=tmp_path / "nolab", options=_lowering("quantize-accuracy"))


# ----------------------------------------------------------------------------------------------------------- QAT


@pytest.mark.slow
def test_qat_exports_qdq_and_lowers_at_int8_without_requantizing(trained, digits, calibration, tmp_path):
    import copy

    from modelport.training import evaluate_torch

    fp32_accuracy = evaluate_torch(trained, digits)
    # overflow_fix = "enable": 7-bit weights everywhere, so legacy-cpu (a CPU without VNNI) can take every layer
    step = get_step("qat", {"epochs": 1, "calibration_samples": 128, "overflow_fix": "enable"})
    with _one_thread():
        outcome = step.apply(copy.deepcopy(trained), CompressionData(dataset=digits, max_seconds=60))
    assert outcome.report["quantizers"] >= 4 and outcome.report["precisions"] == ["int8"]
    assert outcome.report["overflow_fix"] == "enable"
    art = export_onnx(outcome.model, {"input": torch.zeros(2, 1, 28, 28)}, tmp_path / "onnx" / "model.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(_ops(onnx.load(str(art.path))))
    feeds = digits.eval_feeds(batch_size=90)
    ir = OpenVinoConverter().convert(art, get_profile("intel-cpu"), Precision.INT8, calibration=calibration,
                                     out_dir=tmp_path / "ov")
    onx = OnnxRuntimeConverter().convert(art, get_profile("legacy-cpu"), Precision.INT8, calibration=calibration,
                                         out_dir=tmp_path / "ort")
    for out in (ir, onx):
        assert out.details["quantizer"].startswith("none: the ONNX model is quantized already")
    assert ir.details["fp32_operations"] == []  # every conv/matmul runs INT8
    # NNCF quantizes fc's input before Flatten: ONNX Runtime gets a lossless Q/DQ pair in front of fc
    assert len(onx.details["qdq_completed"]) == 1 and onx.details["quantized_ops"]["QLinearConv"] == 2
    assert "int8_warning" not in onx.details and "qdq_not_completed" not in onx.details
    fp32_weight_bytes = 4 * sum(p.numel() for p in trained.parameters())
    assert (ir.path.parent / "model.bin").stat().st_size < 0.4 * fp32_weight_bytes  # INT8 weights in the IR
    assert _accuracy_ov(ir.path, feeds) >= fp32_accuracy - 0.02
    assert _accuracy_ort(onx.path, feeds) >= fp32_accuracy - 0.02
    with pytest.raises(ConversionError, match="int8 only"):
        OpenVinoConverter().convert(art, get_profile("intel-cpu"), Precision.FP32, calibration=None,
                                    out_dir=tmp_path / "f32")
    with pytest.raises(ConversionError, match="quantize it a second time"):
        OnnxRuntimeConverter().convert(art, get_profile("legacy-cpu"), Precision.INT8, calibration=calibration,
                                       out_dir=tmp_path / "twice", options=_lowering("quantize", quant_format="qdq"))


# ------------------------------------------------------------------------------------------ through convert(recipe)


def test_convert_with_quantize_recipes_records_settings_and_accuracy_control(trained, tmp_path):
    from modelport.compression.recipe import Recipe
    from modelport.core.manifest import Manifest
    from modelport.pipeline import convert

    common = {"example_inputs": {"input": torch.zeros(2, 1, 28, 28)}, "dataset": "digits",
              "profiles": "intel-cpu,legacy-cpu", "calibration_size": 64}
    ptq = Recipe.of("ptq", [("quantize", {"quant_format": "qdq", "preset": "mixed", "subset_size": 32})])
    result = convert(trained, out=tmp_path / "ptq", recipe=ptq, **common)
    rows = {a.profile: a for a in Manifest.read(result.out_dir).artifacts if a.profile}
    assert {str(a.precision) for a in rows.values()} == {"int8"}  # the recipe's precision only
    assert all(a.ok for a in rows.values()), [a.status_detail for a in rows.values()]
    assert rows["intel-cpu"].details["nncf_preset"] == "mixed" and rows["intel-cpu"].details["calibration_samples"] == 32
    assert rows["intel-cpu"].details["lowering"]["notes"] == ["not applicable to openvino, ignored: quant_format"]
    assert rows["legacy-cpu"].details["format"] == "qdq"  # the step's setting beats the profile's qoperator
    assert rows["legacy-cpu"].details["reduce_range"] is True  # not given: the profile's int8_reduce_range

    acc = Recipe.of("acc", [("quantize-accuracy", {"max_drop": 0.01})])
    result = convert(trained, out=tmp_path / "acc", recipe=acc, **common)
    rows = {a.profile: a for a in Manifest.read(result.out_dir).artifacts if a.profile}
    control = rows["intel-cpu"].details["accuracy_control"]
    assert rows["intel-cpu"].ok and control["met"] and control["validation_samples"] == 360
    assert not rows["legacy-cpu"].ok and "OpenVINO-only" in rows["legacy-cpu"].status_detail


@pytest.mark.slow
def test_convert_with_qat_recipe_validates_the_export_at_int8_and_lowers_int8_only(trained, tmp_path):
    from modelport.compression.recipe import Recipe
    from modelport.core.manifest import Manifest
    from modelport.pipeline import convert

    recipe = Recipe.of("qat", [("qat", {"epochs": 1, "calibration_samples": 64})])
    with _one_thread():
        result = convert(trained, out=tmp_path / "qat", recipe=recipe, example_inputs={"input": torch.zeros(2, 1, 28, 28)},
                         dataset="digits", profiles="intel-cpu,legacy-cpu", calibration_size=64)
    arts = Manifest.read(result.out_dir).artifacts
    export = next(a for a in arts if a.profile is None and str(a.format) == "onnx")
    assert export.ok and export.details["validation"]["precision"] == "int8"
    lowered = [a for a in arts if a.profile]
    assert sorted((a.profile, str(a.precision)) for a in lowered) == [("intel-cpu", "int8"), ("legacy-cpu", "int8")]
    for a in lowered:
        assert a.ok and a.details["quantizer"].startswith("none: the ONNX model is quantized already")
        assert a.details["validation"]["accuracy_drop"] <= 0.02


def test_tensorrt_refuses_what_it_cannot_honour_before_writing(onnx_art, calibration, tmp_path):
    from modelport.backends.tensorrt.convert import TensorRtConverter

    for options, words in ((_lowering("quantize-accuracy"), "not available for TensorRT"),
                           (_lowering("quantize", mode="dynamic"), "Dynamic INT8")):
        out = tmp_path / words.split()[0]
        with pytest.raises(ConversionError, match=words):
            TensorRtConverter().convert(onnx_art, get_profile("t4"), Precision.INT8, calibration=calibration,
                                        out_dir=out, options=options)
        assert not out.exists()


def test_qat_needs_data_and_refuses_a_model_quantized_already(digits):
    from nncf.torch.quantization.layers import BaseQuantizer

    with pytest.raises(InputError, match="'qat' needs training data"):
        get_step("qat").apply(TinyCNN(), CompressionData())
    import nncf

    quantized = nncf.quantize(TinyCNN(), nncf.Dataset([torch.from_numpy(digits.train_x[:8])]), subset_size=1)
    assert any(isinstance(m, BaseQuantizer) for m in quantized.modules())
    with pytest.raises(InputError, match="fake-quantizers already"):
        get_step("qat").apply(quantized, CompressionData(dataset=digits))


def _qat_like_model(path: Path, weight_bits: int) -> None:
    """DequantizeLinear → MaxPool → Flatten → Gemm with a dequantized INT8 weight: what NNCF's QAT export writes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    top = 2 ** (weight_bits - 1)
    w = rng.integers(-top + 1, top, size=(8, 4 * 2 * 2), dtype=np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "zp"),
        numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.full(8, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(8, np.int8), "wzp"), numpy_helper.from_array(np.array(0.1, np.float32), "os"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wd"], axis=0),
        helper.make_node("Gemm", ["f", "wd"], ["g"], transB=1, name="fc"),
        helper.make_node("QuantizeLinear", ["g", "os", "zp"], ["gq"]),
        helper.make_node("DequantizeLinear", ["gq", "os", "zp"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("weight_bits", [8, 7])
def test_complete_qdq_is_lossless_and_lets_onnx_runtime_quantize_the_gemm(tmp_path, weight_bits, monkeypatch):
    """Issue 10 item 6: on a CPU without VNNI, ONNX Runtime's u8s8 QGemm saturates on 8-bit weights (8.6 vs 6.0),
    so the completion must not hand it such a layer there. The numbers are real on whichever CPU runs this: a
    completed layer must give exactly the values of the uncompleted model on this machine."""
    from modelport.backends.onnxruntime.convert import complete_qdq
    from modelport.core.cpu import CPU_FLAGS_ENV, cpu_info

    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    vnni = cpu_info().vnni  # this machine's real INT8 arithmetic
    _qat_like_model(tmp_path / "src.onnx", weight_bits)
    done = complete_qdq(tmp_path / "src.onnx", tmp_path / "done.onnx")
    x = np.random.default_rng(1).standard_normal((16, 4, 4, 4)).astype(np.float32)
    if weight_bits == 8 and not vnni:
        assert done.changed == [] and "saturate" in done.skipped["fc"] and not (tmp_path / "done.onnx").exists()
        return
    assert done.changed == ["fc"] and done.skipped == {}
    np.testing.assert_array_equal(_run(tmp_path / "src.onnx", x), _run(tmp_path / "done.onnx", x))  # lossless here
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "done.onnx"), opts, providers=["CPUExecutionProvider"])
    assert "QGemm" in _ops(onnx.load(str(tmp_path / "opt.onnx")))
    assert complete_qdq(tmp_path / "done.onnx", tmp_path / "again.onnx").changed == []  # nothing left to complete


def test_complete_qdq_for_a_cpu_without_vnni_completes_7_bit_weights_only(tmp_path, monkeypatch):
    """The no-VNNI decision, taken on any machine (profile int8_target_cpu = 'avx2', or MODELPORT_CPU_FLAGS)."""
    from modelport.backends.onnxruntime.convert import SAFE_WEIGHT_MAGNITUDE, complete_qdq
    from modelport.core.cpu import CPU_FLAGS_ENV

    _qat_like_model(tmp_path / "w8.onnx", 8)
    _qat_like_model(tmp_path / "w7.onnx", 7)
    wide = complete_qdq(tmp_path / "w8.onnx", tmp_path / "w8done.onnx", target_vnni=False)
    assert wide.changed == [] and set(wide.skipped) == {"fc"} and wide.wide_weights == ["fc"]
    narrow = complete_qdq(tmp_path / "w7.onnx", tmp_path / "w7done.onnx", target_vnni=False)
    assert narrow.changed == ["fc"] and narrow.wide_weights == []
    x = np.random.default_rng(2).standard_normal((8, 4, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "w7.onnx", x), _run(tmp_path / "w7done.onnx", x))
    assert 2 * 255 * SAFE_WEIGHT_MAGNITUDE <= 2**15 - 1  # two u8×s8 products fit vpmaddubsw's int16
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,fma")  # this machine, as the decisions see it, lacks VNNI
    assert complete_qdq(tmp_path / "w8.onnx", tmp_path / "w8env.onnx").changed == []


def test_lowering_a_qat_model_for_legacy_cpu_never_completes_8_bit_layers(tmp_path):
    """legacy-cpu declares a CPU without VNNI: the ONNX Runtime converter completes only what is safe there and
    warns about the 8-bit weights the model itself quantized."""
    from modelport.export.onnx import onnx_artifact_from_file

    _qat_like_model(tmp_path / "w8.onnx", 8)
    art = OnnxRuntimeConverter().convert(
        onnx_artifact_from_file(tmp_path / "w8.onnx"), get_profile("legacy-cpu"), Precision.INT8, calibration=None,
        out_dir=tmp_path / "out",
    )
    assert art.details["qdq_completed"] == [] and "fc" in art.details["qdq_not_completed"]
    assert "int8_target_cpu = 'avx2'" in art.details["target_cpu"] and "overflow_fix" in art.details["int8_warning"]


def test_accuracy_control_on_a_static_batch_profile_keeps_labels_with_samples(onnx_art, calibration, digits, tmp_path):
    validation = digits.eval_feeds(batch_size=60, limit=120)
    options = Lowering.from_dict(_lowering("quantize-accuracy", max_drop=0.01, subset_size=16), validation=validation)
    ir = OpenVinoConverter().convert(onnx_art, get_profile("core-ultra-npu"), Precision.INT8, calibration=calibration,
                                     out_dir=tmp_path / "npu", options=options)
    report = ir.details["accuracy_control"]
    assert report["validation_samples"] == 120 and report["met"]
    assert ir.inputs[0].shape[0] == 1  # the NPU profile's static batch
