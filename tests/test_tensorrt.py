"""The TensorRT path (t4 profile).

Most tests need neither TensorRT nor a GPU: parser preflight, sidecar checks, the device bundle (model.onnx,
build_engine.sh, calibration.npz) and the refusals. ``build_engine.sh`` is also run end to end with a stand-in
for trtexec (which cannot exist here): that checks the script's own plumbing (argument quoting, the ONNX hash
check, the INT8 cache guard, the sidecar it writes), not TensorRT. The real-path tests at the end build and run
engines; they are marked ``tensorrt`` and ``gpu`` and skip with the reason when either is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from modelport.backends.sidecar import sidecar_path
from modelport.backends.tensorrt import convert as trtconv
from modelport.backends.tensorrt.convert import TensorRtConverter
from modelport.backends.tensorrt.facts import (
    BUNDLE_NAME,
    CALIBRATION_NAME,
    ENGINE_NAME,
    ONNX_NAME,
    PREFLIGHT_NAME,
    SCRIPT_NAME,
    SIDECAR_NAME,
    calibration_cache_name,
)
from modelport.backends.tensorrt.plan import BuildSettings, Bundle, load_calibration, write_trt_bundle
from modelport.backends.tensorrt.preflight import load_op_table, preflight
from modelport.backends.tensorrt.runtime import TensorRtRuntime, check_sidecar, parse_device
from modelport.core.files import sha256_file
from modelport.core.profiles import get_profile
from modelport.core.types import Artifact, Format, Precision, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import (
    ConversionError,
    InferenceInputError,
    InputError,
    RuntimeUnavailableError,
)

T4_PRESENT = {"tensorrt_version": "10.3.0", "gpu_name": "Tesla T4", "compute_capability": "7.5"}
INPUT_SHAPE = (1, 28, 28)


# --------------------------------------------------------------------------------------------- fixtures


def _tiny_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 14 * 14, 10),
    ).eval()


def _onnx_artifact(path: Path, batch: int | str = "batch") -> Artifact:
    return Artifact(
        path=path,
        format=Format.ONNX,
        precision=Precision.FP32,
        inputs=(TensorSpec("input", (batch, *INPUT_SHAPE)),),
        outputs=(TensorSpec("logits", (batch, 10)),),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
    )


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A small conv net exported with a dynamic batch axis (TorchScript exporter, opset 17)."""
    import torch

    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    torch.onnx.export(
        _tiny_net(),
        (torch.randn(2, *INPUT_SHAPE),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return _onnx_artifact(path)


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    import torch

    path = tmp_path_factory.mktemp("static") / "static.onnx"
    torch.onnx.export(
        _tiny_net(), (torch.randn(4, *INPUT_SHAPE),), str(path), input_names=["input"], output_names=["logits"],
        opset_version=17, dynamo=False,
    )
    return _onnx_artifact(path, batch=4)


def _calibration(n: int = 13, batch: int = 5, name: str = "input", seed: int = 0) -> Feeds:
    x = np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE)).astype(np.float32)
    return Feeds.from_array(x, input_name=name, batch_size=batch)


def _save(model, path: Path) -> Path:
    import onnx

    onnx.save(model, str(path))
    return path


def _custom_domain_model(opset: int = 17):
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("FancyOp", ["r"], ["f"], domain="com.example"),
        helper.make_node("Scaler", ["f"], ["y"], domain="ai.onnx.ml", scale=[2.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", opset),
            helper.make_opsetid("com.example", 1),
            helper.make_opsetid("ai.onnx.ml", 3),
        ],
    )


# -------------------------------------------------------------------------------------------- preflight


def test_op_table_is_consistent() -> None:
    table = load_op_table()
    assert table.tensorrt_version.startswith("10.")
    assert {"Conv", "Gemm", "MatMul", "Relu", "LayerNormalization", "QuantizeLinear"} <= table.supported
    assert not table.supported & table.unsupported
    assert set(table.restrictions) <= table.supported
    assert "onnx-tensorrt" in table.source


def test_preflight_of_exported_conv_net_is_ok(conv_onnx: Artifact) -> None:
    report = preflight(conv_onnx.path)
    assert report.ok, report.notes
    assert report.unsupported == []
    assert report.opset == 17
    assert report.ops_used["Conv"] == 1 and report.ops_used["Gemm"] == 1
    assert {"Relu", "MaxPool", "Flatten"} <= set(report.ops_used)
    assert "MaxPool" in report.restricted  # 2D/3D only, no Indices output
    json.dumps(report.to_dict())  # goes into preflight.json


def test_preflight_flags_custom_and_ml_domains(tmp_path: Path) -> None:
    report = preflight(_save(_custom_domain_model(), tmp_path / "custom.onnx"))
    assert not report.ok
    assert report.unsupported == ["ai.onnx.ml::Scaler", "com.example::FancyOp"]
    assert report.ops_used == {"Relu": 1, "ai.onnx.ml::Scaler": 1, "com.example::FancyOp": 1}
    assert any("plugin" in n for n in report.notes)


def test_preflight_walks_subgraphs_and_expands_local_functions(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    def branch(op: str):
        out = helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node(op, ["x"], [f"{op}_out"])], op, [], [out])

    body = [helper.make_node("Add", ["a", "a"], ["b"])]
    func = helper.make_function("local.fn", "Double", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [
            helper.make_node("If", ["c"], ["y"], then_branch=branch("Unique"), else_branch=branch("Relu")),
            helper.make_node("Double", ["y"], ["z"], domain="local.fn"),
        ],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local.fn", 1)],
                              functions=[func])
    report = preflight(_save(model, tmp_path / "sub.onnx"))
    assert report.ops_used == {"Add": 1, "If": 1, "Relu": 1, "Unique": 1}  # the function call became its body
    assert report.unsupported == ["Unique"]
    assert not report.ok


def test_preflight_opset_outside_parser_range(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    report = preflight(_save(model, tmp_path / "old.onnx"))
    assert report.unsupported == [] and report.opset == 8
    assert not report.ok
    assert any("opset 8" in n for n in report.notes)


def test_preflight_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No ONNX file"):
        preflight(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00 not protobuf")
    with pytest.raises(ConversionError, match="not a readable ONNX model"):
        preflight(bad)


# ---------------------------------------------------------------------------------------------- sidecar


def _sidecar(**changes: str) -> dict:
    return {**T4_PRESENT, "precision": "fp16", "onnx_sha256": "ab" * 32, **changes}


def test_check_sidecar_accepts_matching_machine() -> None:
    assert check_sidecar(_sidecar(), dict(T4_PRESENT)) is None


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"tensorrt_version": "10.0.1"}, "TRT 10.0.1, this machine has Tesla T4 (compute 7.5)/TRT 10.3.0"),
        ({"gpu_name": "NVIDIA A10G", "compute_capability": "8.6"}, "engine built for NVIDIA A10G (compute 8.6)"),
        ({"compute_capability": "8.0"}, "compute 8.0"),
    ],
)
def test_check_sidecar_refuses_other_machine(change: dict, needle: str) -> None:
    reason = check_sidecar(_sidecar(**change), dict(T4_PRESENT))
    assert reason is not None
    assert needle in reason
    assert "rebuild from model.onnx with build_engine.sh" in reason


def test_check_sidecar_refuses_missing_fields_and_non_objects() -> None:
    side = _sidecar()
    del side["gpu_name"]
    side["tensorrt_version"] = ""
    reason = check_sidecar(side, dict(T4_PRESENT))
    assert reason is not None and "lacks tensorrt_version, gpu_name" in reason
    assert check_sidecar(["not", "a", "dict"], dict(T4_PRESENT)) is not None


# ----------------------------------------------------------------------------------------------- bundle


def _script_args(script: str) -> list[str]:
    """The trtexec argument lines of build_engine.sh."""
    lines = script.split('"$TRTEXEC" \\\n', 1)[1].split("\npython3", 1)[0].splitlines()
    return [ln.strip().rstrip("\\").strip() for ln in lines]


def test_fp16_bundle(conv_onnx: Artifact, tmp_path: Path) -> None:
    out = write_trt_bundle(conv_onnx, get_profile("t4"), Precision.FP16, None, tmp_path / "b")
    assert sha256_file(out / ONNX_NAME) == conv_onnx.sha256
    assert not (out / CALIBRATION_NAME).exists()
    assert json.loads((out / PREFLIGHT_NAME).read_text())["ok"] is True
    script = (out / SCRIPT_NAME).read_text()
    assert os.access(out / SCRIPT_NAME, os.X_OK)
    assert _script_args(script) == [
        "--onnx=model.onnx",
        "--saveEngine=model.engine",
        "--fp16",
        "--minShapes=input:1x1x28x28",
        "--optShapes=input:8x1x28x28",
        "--maxShapes=input:32x1x28x28",
        "--memPoolSize=workspace:1024M",
        "--timingCacheFile=timing.cache",
        "--skipInference",
    ]
    subprocess.run(["bash", "-n", str(out / SCRIPT_NAME)], check=True)  # the script parses
    bundle = Bundle.read(out)
    assert bundle.precision is Precision.FP16 and bundle.onnx_sha256 == conv_onnx.sha256
    assert bundle.shapes == {"input": {"min": [1, 1, 28, 28], "opt": [8, 1, 28, 28], "max": [32, 1, 28, 28]}}


def test_fp32_bundle_turns_tf32_off(conv_onnx: Artifact, tmp_path: Path) -> None:
    out = write_trt_bundle(conv_onnx, get_profile("t4"), Precision.FP32, None, tmp_path)
    args = _script_args((out / SCRIPT_NAME).read_text())
    assert "--noTF32" in args
    assert not {"--fp16", "--int8"} & set(args)


def test_int8_bundle_writes_calibration_inputs(conv_onnx: Artifact, tmp_path: Path) -> None:
    calib = _calibration(n=13, batch=5)
    profile = dataclasses.replace(get_profile("t4"), options={"min_batch": 2, "opt_batch": 4, "max_batch": 16,
                                                               "workspace_mib": 512, "int8_fp16_fallback": False})
    out = write_trt_bundle(conv_onnx, profile, Precision.INT8, calib, tmp_path)
    args = _script_args((out / SCRIPT_NAME).read_text())
    assert "--int8" in args and "--fp16" not in args
    assert '--calib="$CALIB_CACHE"' in args
    assert "--optShapes=input:4x1x28x28" in args and "--memPoolSize=workspace:512M" in args
    script = (out / SCRIPT_NAME).read_text()
    assert f"calib-{conv_onnx.sha256[:12]}-trt${{TRT_VERSION}}.cache" in script
    arrays = load_calibration(out / CALIBRATION_NAME)
    assert list(arrays) == ["input"]
    np.testing.assert_array_equal(arrays["input"], np.concatenate([b["input"] for b in calib]))
    assert json.loads((out / BUNDLE_NAME).read_text())["calibration"]["samples"] == 13


def test_calibration_cache_name_is_keyed_by_onnx_and_trt_version() -> None:
    assert calibration_cache_name("0123456789abcdef" * 4, "10.3.0") == "calib-0123456789ab-trt10.3.0.cache"


def test_static_model_bundle_has_no_shape_flags(static_onnx: Artifact, tmp_path: Path) -> None:
    out = write_trt_bundle(static_onnx, get_profile("t4"), Precision.FP16, None, tmp_path)
    assert not any("Shapes=" in a for a in _script_args((out / SCRIPT_NAME).read_text()))
    assert Bundle.read(out).shapes == {}


def test_calibration_under_other_name_is_renamed_and_checked(conv_onnx: Artifact, tmp_path: Path) -> None:
    out = write_trt_bundle(conv_onnx, get_profile("t4"), Precision.INT8, _calibration(name="x"), tmp_path / "ok")
    assert list(load_calibration(out / CALIBRATION_NAME)) == ["input"]
    wrong = Feeds.from_array(np.zeros((4, 3, 28, 28), np.float32), batch_size=2)
    with pytest.raises(InferenceInputError, match="axis 1"):
        write_trt_bundle(conv_onnx, get_profile("t4"), Precision.INT8, wrong, tmp_path / "bad")


def test_bundle_refusals(conv_onnx: Artifact, tmp_path: Path) -> None:
    t4 = get_profile("t4")
    with pytest.raises(InputError, match="needs calibration data"):
        write_trt_bundle(conv_onnx, t4, Precision.INT8, None, tmp_path / "int8")
    assert not (tmp_path / "int8").exists()
    with pytest.raises(InputError, match="min ≤ opt ≤ max"):
        BuildSettings.from_profile(dataclasses.replace(t4, options={"min_batch": 16, "opt_batch": 8}))
    with pytest.raises(InputError, match="int8_calibrator"):
        BuildSettings.from_profile(dataclasses.replace(t4, options={"int8_calibrator": "percentile"}))
    with pytest.raises(InputError, match="workspace_mib"):
        BuildSettings.from_profile(dataclasses.replace(t4, options={"workspace_mib": 0}))
    assert BuildSettings.from_profile(dataclasses.replace(t4, static_batch=4)).opt_batch == 4
    two_dynamic = conv_onnx.replace(inputs=(TensorSpec("input", ("batch", 1, "h", 28)),))
    with pytest.raises(ConversionError, match="axis 2"):
        write_trt_bundle(two_dynamic, t4, Precision.FP16, None, tmp_path / "dyn")
    with pytest.raises(InputError, match="takes an ONNX artifact"):
        write_trt_bundle(conv_onnx.replace(format=Format.OPENVINO_IR), t4, Precision.FP16, None, tmp_path / "ir")


# ----------------------------------------------------------------------------- build_engine.sh end to end

_STAND_IN_TRTEXEC = """#!/usr/bin/env bash
# Stand-in for trtexec: records its arguments and writes the file named by --saveEngine.
printf '%s\\n' "$@" > trtexec.args
for a in "$@"; do case "$a" in --saveEngine=*) printf 'engine bytes' > "${a#--saveEngine=}";; esac; done
"""


def _run_script(bundle_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "fake-trtexec"
    fake.write_text(_STAND_IN_TRTEXEC)
    fake.chmod(0o755)
    full_env = {**os.environ, "TRTEXEC": str(fake), "TRT_VERSION": "10.3.0", "GPU_NAME": "Tesla T4",
                "COMPUTE_CAPABILITY": "7.5", **env}
    return subprocess.run(["bash", str(bundle_dir / SCRIPT_NAME)], env=full_env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.skipif(shutil.which("python3") is None, reason="build_engine.sh needs python3 on PATH")
def test_build_script_writes_a_sidecar_the_runtime_accepts(conv_onnx: Artifact, tmp_path: Path) -> None:
    out = write_trt_bundle(conv_onnx, get_profile("t4"), Precision.FP16, None, tmp_path / "b")
    proc = _run_script(out, tmp_path)
    assert proc.returncode == 0, proc.stderr
    recorded = (out / "trtexec.args").read_text().splitlines()
    assert recorded == _script_args((out / SCRIPT_NAME).read_text())
    sidecar = json.loads((out / SIDECAR_NAME).read_text())
    assert check_sidecar(sidecar, dict(T4_PRESENT)) is None
    assert sidecar["engine_sha256"] == sha256_file(out / ENGINE_NAME)
    assert sidecar["onnx_sha256"] == conv_onnx.sha256 and sidecar["precision"] == "fp16"
    assert sidecar["build_flags"] == ["fp16"] and sidecar["builder"] == "trtexec"
    assert check_sidecar(sidecar, {**T4_PRESENT, "tensorrt_version": "10.4.0"}) is not None


@pytest.mark.skipif(shutil.which("python3") is None, reason="build_engine.sh needs python3 on PATH")
def test_build_script_int8_needs_the_keyed_cache_and_a_matching_onnx(conv_onnx: Artifact, tmp_path: Path) -> None:
    out = write_trt_bundle(conv_onnx, get_profile("t4"), Precision.INT8, _calibration(), tmp_path / "b")
    proc = _run_script(out, tmp_path)
    assert proc.returncode == 2 and "No INT8 calibration cache" in proc.stderr
    assert not (out / ENGINE_NAME).exists()

    cache = calibration_cache_name(conv_onnx.sha256, "10.3.0")
    (out / cache).write_text("TRT-100300-EntropyCalibration2\n")
    proc = _run_script(out, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"--calib={cache}" in (out / "trtexec.args").read_text().splitlines()
    assert json.loads((out / SIDECAR_NAME).read_text())["calibration_cache"] == cache

    (out / ONNX_NAME).write_bytes(b"tampered")
    proc = _run_script(out, tmp_path)
    assert proc.returncode != 0 and "does not match the bundle" in proc.stderr


# ---------------------------------------------------------------------------------- without TensorRT / GPU

_HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _no_trt_reason() -> str | None:
    if not _HAS_TRT:
        return "tensorrt not installed"
    if not _has_cuda():
        return "no CUDA GPU"
    return None


only_without_trt = pytest.mark.skipif(_no_trt_reason() is None, reason="TensorRT and a GPU are present here")


@only_without_trt
def test_converter_and_runtime_say_why_they_are_unavailable() -> None:
    ok, why = TensorRtConverter().availability()
    assert not ok and "tensorrt" in why.lower()
    rt = TensorRtRuntime()
    assert rt.availability() == (ok, why)
    assert rt.devices() == []
    assert rt.device_available("cuda")[0] is False


@only_without_trt
def test_convert_writes_the_bundle_then_raises_unavailable(conv_onnx: Artifact, tmp_path: Path) -> None:
    out = tmp_path / "t4-int8"
    with pytest.raises(RuntimeUnavailableError) as info:
        TensorRtConverter().convert(
            conv_onnx, get_profile("t4"), Precision.INT8, calibration=_calibration(), out_dir=out
        )
    assert str(out) in str(info.value) and "bash build_engine.sh" in str(info.value)
    for name in (ONNX_NAME, SCRIPT_NAME, PREFLIGHT_NAME, BUNDLE_NAME, CALIBRATION_NAME):
        assert (out / name).is_file(), name
    assert not (out / ENGINE_NAME).exists()


def test_convert_refuses_a_graph_the_parser_cannot_take(tmp_path: Path) -> None:
    src = _save(_custom_domain_model(), tmp_path / "custom.onnx")
    art = Artifact(path=src, format=Format.ONNX, precision=Precision.FP32, inputs=(TensorSpec("x", ("batch", 4)),),
                   outputs=(TensorSpec("y", ("batch", 4)),))
    with pytest.raises(ConversionError, match="com.example::FancyOp"):
        TensorRtConverter().convert(art, get_profile("t4"), Precision.FP16, calibration=None, out_dir=tmp_path / "o")
    assert json.loads((tmp_path / "o" / PREFLIGHT_NAME).read_text())["ok"] is False


def _engine_artifact(directory: Path, precision: Precision = Precision.FP16) -> Artifact:
    engine = directory / ENGINE_NAME
    return Artifact(
        path=engine,
        format=Format.TENSORRT_ENGINE,
        precision=precision,
        inputs=(TensorSpec("input", ("batch", *INPUT_SHAPE)),),
        outputs=(TensorSpec("logits", ("batch", 10)),),
    )


def test_runtime_reads_the_sidecar_before_anything_else(tmp_path: Path) -> None:
    (tmp_path / ENGINE_NAME).write_bytes(b"not an engine")  # never deserialised: the sidecar check comes first
    art = _engine_artifact(tmp_path)
    with pytest.raises(RuntimeUnavailableError, match="no sidecar model.engine.json"):
        TensorRtRuntime().load(art, "cuda").__enter__()
    (tmp_path / SIDECAR_NAME).write_text("{broken")
    with pytest.raises(RuntimeUnavailableError, match="not valid JSON"):
        TensorRtRuntime().load(art, "cuda:0").__enter__()


@only_without_trt
def test_runtime_with_a_sidecar_but_no_tensorrt_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / ENGINE_NAME).write_bytes(b"not an engine")
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(_sidecar()))
    with pytest.raises(RuntimeUnavailableError, match="tensorrt"):
        TensorRtRuntime().load(_engine_artifact(tmp_path), "cuda").__enter__()


def test_build_from_bundle_checks_the_copy_and_the_machine(conv_onnx: Artifact, tmp_path: Path, capsys) -> None:
    out = write_trt_bundle(conv_onnx, get_profile("t4"), Precision.FP16, None, tmp_path / "b")
    if _no_trt_reason() is not None:
        with pytest.raises(RuntimeUnavailableError, match="tensorrt"):
            trtconv.build_from_bundle(out)
    assert trtconv.main([]) == 2
    (out / ONNX_NAME).write_bytes(b"truncated")
    assert trtconv.main([str(out)]) == InputError.exit_code
    assert "does not match the bundle" in capsys.readouterr().err
    assert trtconv.main([str(tmp_path / "elsewhere")]) != 0


def test_runtime_load_refusals(tmp_path: Path, conv_onnx: Artifact) -> None:
    rt = TensorRtRuntime()
    with pytest.raises(InputError, match="cannot load a 'onnx' artifact"):
        rt.load(conv_onnx, "cuda")
    with pytest.raises(InputError, match="CUDA devices, not 'CPU'"):
        rt.load(_engine_artifact(tmp_path), "CPU")
    assert [parse_device(d) for d in ("cuda", "cuda:0", "CUDA:3", "gpu")] == [0, 0, 3, 0]


# ------------------------------------------------------------------------------- real path: TensorRT + GPU

_REASON = _no_trt_reason()


@pytest.fixture(scope="module")
def engines(conv_onnx: Artifact, tmp_path_factory: pytest.TempPathFactory) -> dict[Precision, Artifact]:
    if _REASON is not None:
        pytest.skip(_REASON)
    root = tmp_path_factory.mktemp("engines")
    calib = _calibration(n=64, batch=8, seed=1)
    conv = TensorRtConverter()
    return {
        p: conv.convert(conv_onnx, get_profile("t4"), p, calibration=calib, out_dir=root / str(p))
        for p in (Precision.FP32, Precision.FP16, Precision.INT8)
    }


def _ort_reference(art: Artifact, x: np.ndarray) -> np.ndarray:
    from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime

    with OnnxRuntimeRuntime().load(art, "CPU") as sess:
        return sess.infer({"input": x})[0]


def _trt_outputs(art: Artifact, x: np.ndarray) -> tuple[np.ndarray, object]:
    with TensorRtRuntime().load(art, "cuda:0") as sess:
        y = sess.infer({"input": x})[0]
        sess.synchronize()
        return y, sess


@pytest.mark.parametrize("batch", [1, 5, 32])
@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_fp32_engine_matches_onnxruntime(engines: dict, conv_onnx: Artifact, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, *INPUT_SHAPE)).astype(np.float32)
    y, sess = _trt_outputs(engines[Precision.FP32], x)
    assert y.shape == (batch, 10)
    np.testing.assert_allclose(y, _ort_reference(conv_onnx, x), atol=1e-4, rtol=1e-3)
    assert sess.last_h2d_ms > 0 and sess.last_compute_ms > 0 and sess.last_d2h_ms > 0


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_fp16_and_int8_engines_agree_with_onnxruntime(engines: dict, conv_onnx: Artifact) -> None:
    from modelport.agreement import compare

    x = np.random.default_rng(7).standard_normal((16, *INPUT_SHAPE)).astype(np.float32)
    ref = _ort_reference(conv_onnx, x)
    fp16 = compare([ref], [_trt_outputs(engines[Precision.FP16], x)[0]])
    assert fp16.finite and fp16.cosine >= 0.999
    int8 = compare([ref], [_trt_outputs(engines[Precision.INT8], x)[0]])
    assert int8.finite and not int8.constant and int8.cosine >= 0.98
    side = json.loads(sidecar_path(engines[Precision.INT8].path).read_text())
    assert side["build_flags"] == ["int8", "fp16"]
    assert side["calibration"]["algorithm"] == "entropy" and side["calibration"]["batches"] == 8
    assert (engines[Precision.INT8].path.parent / side["calibration"]["cache"]).is_file()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_int8_rebuild_reuses_the_calibration_cache(engines: dict, conv_onnx: Artifact) -> None:
    out = engines[Precision.INT8].path.parent
    calib = _calibration(n=64, batch=8)
    art = TensorRtConverter().convert(conv_onnx, get_profile("t4"), Precision.INT8, calibration=calib, out_dir=out)
    assert art.details["calibration"]["cache_reused"] is True
    assert json.loads((out / SIDECAR_NAME).read_text())["engine_sha256"] == art.sha256


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_real_engine_with_a_foreign_sidecar_is_refused(engines: dict, tmp_path: Path) -> None:
    src = engines[Precision.FP16].path.parent
    shutil.copy(src / ENGINE_NAME, tmp_path / ENGINE_NAME)
    side = json.loads((src / SIDECAR_NAME).read_text())
    (tmp_path / SIDECAR_NAME).write_text(json.dumps({**side, "gpu_name": "NVIDIA Imaginary 9000"}))
    art = engines[Precision.FP16].replace(path=tmp_path / ENGINE_NAME)
    with pytest.raises(RuntimeUnavailableError, match="NVIDIA Imaginary 9000.*rebuild from model.onnx"):
        TensorRtRuntime().load(art, "cuda").__enter__()
    (tmp_path / SIDECAR_NAME).unlink()
    with pytest.raises(RuntimeUnavailableError, match="no sidecar"):
        TensorRtRuntime().load(art, "cuda").__enter__()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_batch_outside_the_profile_is_refused(engines: dict) -> None:
    x = np.zeros((33, *INPUT_SHAPE), np.float32)
    with TensorRtRuntime().load(engines[Precision.FP32], "cuda") as sess:
        with pytest.raises(InferenceInputError, match="refused shape"):
            sess.infer({"input": x})


def test_calibration_batches_feed_polygraphy_fixed_size_numpy_batches() -> None:
    """What Polygraphy's calibrator receives: full batches of one shape under the input names; the remainder is
    dropped; unequal sample counts or too few samples are input errors (checked here, without TensorRT)."""
    from modelport.backends.tensorrt.build import CalibrationBatches

    arrays = {"input": np.arange(10 * 3, dtype=np.float32).reshape(10, 3)}
    batches = CalibrationBatches(arrays, 4)
    got = list(batches)
    assert len(got) == len(batches) == 2 and batches.shape("input") == (4, 3)
    assert all(set(b) == {"input"} and b["input"].shape == (4, 3) and b["input"].flags.c_contiguous for b in got)
    np.testing.assert_array_equal(got[1]["input"], arrays["input"][4:8])
    with pytest.raises(InputError, match="different sample counts"):
        CalibrationBatches({"a": np.zeros((4, 1)), "b": np.zeros((5, 1))}, 2)
    with pytest.raises(InputError, match="at least 16"):
        CalibrationBatches(arrays, 8 + 8)
