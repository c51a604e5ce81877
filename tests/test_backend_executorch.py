"""ExecuTorch backend (edge-xnnpack): real torch.export → XNNPACK lowering of a trained tiny CNN to a .pte, FP32 and
INT8 (PT2E, XNNPACK quantizer, calibrated on real digits), loaded and run in ExecuTorch's own runtime and compared
with PyTorch. Skips, with the reason, where executorch is not installed or does not load with this torch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TinyCNN, digits_images, train_tiny_cnn

from modelport.agreement import FP32_ATOL, FP32_RTOL, INT8_MIN_TOP1_AGREEMENT
from modelport.backends import BACKENDS, get_converter, get_runtime
from modelport.backends.executorch.convert import (
    PROGRAM_NAME,
    ExecuTorchConverter,
    executorch_availability,
)
from modelport.backends.torch.runtime import register_module, unregister_module
from modelport.core.files import sha256_file
from modelport.core.profiles import get_profile, parse_profile_list
from modelport.core.types import Artifact, Format, Precision, Status, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError, InferenceInputError, InputError, ValidationError

CAN_BUILD, BUILD_WHY = executorch_availability(lower=True, quantize=True)
needs_executorch = pytest.mark.skipif(not CAN_BUILD, reason=f"cannot build ExecuTorch programs here: {BUILD_WHY}")

INPUTS = (TensorSpec("input", ("batch", 1, 28, 28)),)
OUTPUTS = (TensorSpec("logits", ("batch", 10)),)


def _torch_artifact(path: Path, sha: str) -> Artifact:
    return Artifact(
        path=path, format=Format.PYTORCH, precision=Precision.FP32, inputs=INPUTS, outputs=OUTPUTS, sha256=sha
    )


# ------------------------------------------------------------------------------- table, profile, refusals


def test_profile_and_backend_row() -> None:
    p = get_profile("edge-xnnpack")
    assert (p.runtime, p.format, p.device) == ("executorch", Format.EXECUTORCH_PROGRAM, "CPU")
    assert p.precisions == (Precision.FP32, Precision.INT8) and p.options["max_batch"] == 256
    assert "edge-xnnpack" not in [x.name for x in parse_profile_list("all")]  # optional extra: only when named
    row = BACKENDS["executorch"]
    assert row.formats == (Format.EXECUTORCH_PROGRAM,) and "executorch" in row.distributions
    assert Format.EXECUTORCH_PROGRAM not in row.code_formats  # a FlatBuffer, no pickle, no native code
    assert get_converter("executorch").source is Format.PYTORCH


def test_missing_package_is_reported_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "executorch", None)  # find_spec then answers "not installed"
    ok, why = executorch_availability(lower=True)
    assert not ok and "executorch is not installed" in why and "pip install executorch" in why
    rt = get_runtime("executorch")
    assert rt.availability()[0] is False and rt.devices() == []


def test_converter_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    onnx_art = Artifact(path=tmp_path / "m.onnx", format=Format.ONNX, precision=Precision.FP32, inputs=INPUTS, outputs=())
    with pytest.raises(ConversionError, match="not a onnx artifact"):
        ExecuTorchConverter().convert(onnx_art, get_profile("edge-xnnpack"), Precision.FP32, out_dir=tmp_path / "x")
    torch_art = onnx_art.replace(format=Format.PYTORCH)
    with pytest.raises(ConversionError, match="not fp16"):
        ExecuTorchConverter().convert(torch_art, get_profile("edge-xnnpack"), Precision.FP16, out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@needs_executorch
def test_int8_needs_calibration_and_refuses_settings_it_cannot_honour(tmp_path: Path) -> None:
    torch_art = _torch_artifact(tmp_path / "m.safetensors", "f" * 64)
    register_module(torch_art.sha256, TinyCNN().eval())
    try:
        conv, profile = ExecuTorchConverter(), get_profile("edge-xnnpack")
        with pytest.raises(ConversionError, match="needs calibration data"):
            conv.convert(torch_art, profile, Precision.INT8, calibration=None, out_dir=tmp_path / "x")
        feeds = Feeds.from_array(np.zeros((4, 1, 28, 28), np.float32))
        for settings, words in [
            ({"ignored_scope": {"names": ["node_linear_1"]}}, "ignored_scope"),
            ({"max_drop": 0.01}, "accuracy-controlled"),
            ({"mode": "dynamic"}, "static INT8 only"),
        ]:
            with pytest.raises(ConversionError, match=words):
                conv.convert(torch_art, profile, Precision.INT8, calibration=feeds, out_dir=tmp_path / "x",
                             options={"quantization": settings})
    finally:
        unregister_module(torch_art.sha256)
    assert not (tmp_path / "x").exists()


@needs_executorch
def test_runtime_refuses_other_formats_and_files_that_are_not_programs(tmp_path: Path) -> None:
    rt = get_runtime("executorch")
    ok, why = rt.availability()
    assert ok and "XNNPACK" in why and torch.__version__.split("+")[0] in why
    assert rt.devices() == ["CPU"] and rt.device_available("CPU") == (True, "")
    onnx_art = Artifact(path=tmp_path / "m.onnx", format=Format.ONNX, precision=Precision.FP32, inputs=INPUTS, outputs=())
    with pytest.raises(InputError, match="cannot load a 'onnx' artifact"):
        rt.load(onnx_art)
    bad = tmp_path / PROGRAM_NAME
    bad.write_bytes(b"not a program " * 8)
    art = onnx_art.replace(path=bad, format=Format.EXECUTORCH_PROGRAM)
    with pytest.raises(ValidationError, match="not an ExecuTorch program"):
        with rt.load(art):
            pass
    bad.write_bytes(b"\x00\x00\x00\x00ET12" + b"\xff" * 64)  # the identifier, then garbage: the verifier refuses it
    with pytest.raises(ValidationError, match="ExecuTorch refused the program"):
        with rt.load(art):
            pass


# ------------------------------------------------------------------------------------------- real lowering


@pytest.fixture(scope="module")
def lowered(tmp_path_factory: pytest.TempPathFactory):
    if not CAN_BUILD:
        pytest.skip(f"cannot build ExecuTorch programs here: {BUILD_WHY}")
    x, y = digits_images()
    model = train_tiny_cnn(x, y)
    out = tmp_path_factory.mktemp("edge")
    src = _torch_artifact(out / "model.safetensors", "e" * 64)
    register_module(src.sha256, model)
    profile = get_profile("edge-xnnpack")
    calibration = Feeds.from_array(x[::7][:128], batch_size=1)  # 128 real digits, one per batch like the pipeline
    try:
        fp32 = ExecuTorchConverter().convert(src, profile, Precision.FP32, out_dir=out / "fp32")
        int8 = ExecuTorchConverter().convert(
            src, profile, Precision.INT8, calibration=calibration, out_dir=out / "int8",
            options={"step": "quantize", "quantization": {"subset_size": 100, "preset": "mixed"}},
        )
    finally:
        unregister_module(src.sha256)
    return model, fp32, int8, (x, y)


@needs_executorch
def test_programs_are_written_and_described(lowered) -> None:
    _, fp32, int8, _ = lowered
    for art, prec in ((fp32, Precision.FP32), (int8, Precision.INT8)):
        assert art.format is Format.EXECUTORCH_PROGRAM and art.precision is prec and art.profile == "edge-xnnpack"
        assert art.path.name == PROGRAM_NAME and art.files == (PROGRAM_NAME,)
        assert art.sha256 == sha256_file(art.path) and art.size_bytes == art.path.stat().st_size
        assert art.parent_sha256 == "e" * 64  # lowered from the PyTorch reference
        assert art.path.read_bytes()[4:8] == b"ET12"
        d = art.details
        assert d["delegation"]["xnnpack_subgraphs"] >= 1 and d["dynamic_shapes"]["batch"]["max"] == 256
        assert 256 * 28 * 28 * 4 <= d["planned_memory_bytes"] < 64 << 20  # at least the input at batch 256
        assert set(art.tools) >= {"executorch", "torch"} and art.tools["torch"] == torch.__version__
        assert not list(art.path.parent.glob(".*tmp*"))  # written atomically
    assert fp32.details["self_check"]["allclose_fp32"] and fp32.details["self_check"]["batches"] == [3, 17]
    assert int8.details["self_check"]["data"] == "calibration" and int8.details["self_check"]["batches"] == [32]
    q = int8.details["quantization"]
    assert q["quantizer"] == "XNNPACKQuantizer" and q["calibration_samples"] == 100  # subset_size honoured
    assert "torchao" in int8.tools
    assert int8.details["lowering"]["notes"] == ["not applicable to executorch, ignored: preset"]
    assert int8.size_bytes < fp32.size_bytes * 0.6  # int8 weights


@needs_executorch
def test_fp32_program_matches_pytorch_at_any_batch_in_range(lowered) -> None:
    model, fp32, _, _ = lowered
    rng = np.random.default_rng(1)
    with get_runtime("executorch").load(fp32, "CPU") as session:
        for batch in (1, 7, 256):
            x = rng.random((batch, 1, 28, 28), dtype=np.float32)
            (got,) = session.infer({"input": x})
            with torch.no_grad():
                want = model(torch.from_numpy(x)).numpy()
            assert got.shape == (batch, 10) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)
        with pytest.raises(InferenceInputError, match="batches 1 to 256"):
            session.infer({"input": np.zeros((257, 1, 28, 28), np.float32)})
        with pytest.raises(InferenceInputError, match="has size 14 on axis 2"):
            session.infer({"input": np.zeros((1, 1, 14, 28), np.float32)})
        run = session.bind({"input": rng.random((8, 1, 28, 28), dtype=np.float32)})
        assert run()[0].shape == (8, 10)


@needs_executorch
def test_int8_program_agrees_with_pytorch_on_real_digits(lowered) -> None:
    model, _, int8, (x, y) = lowered
    with get_runtime("executorch").load(int8, "CPU") as session:
        got = np.concatenate([session.infer({"input": x[i : i + 32]})[0] for i in range(0, 512, 32)])
    with torch.no_grad():
        want = model(torch.from_numpy(x[:512])).numpy()
    assert np.isfinite(got).all() and np.ptp(got) > 0
    agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
    drop = float(np.mean(want.argmax(1) == y[:512]) - np.mean(got.argmax(1) == y[:512]))
    assert agreement >= INT8_MIN_TOP1_AGREEMENT, agreement
    assert drop <= 0.02, drop
    assert not np.allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)  # really quantized, not the FP32 graph


class PoolCNN(torch.nn.Module):
    """A stride-1 convolution then max-pool (simple-mnist's pattern): torch 2.14's fake convolution guards on
    batch < 16 while ExecuTorch lowers it, which without the converter's guard suppression planned memory for
    batch 15 whatever the exported range."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 14 * 14, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(input)), 2).flatten(1))


@needs_executorch
@pytest.mark.parametrize("max_batch", [256, 20])
def test_memory_is_planned_for_the_profile_max_batch(tmp_path: Path, max_batch: int) -> None:
    import dataclasses

    torch.manual_seed(0)
    model = PoolCNN().eval()
    src = _torch_artifact(tmp_path / "m.safetensors", "d" * 64)
    base = get_profile("edge-xnnpack")
    profile = dataclasses.replace(base, options={**base.options, "max_batch": max_batch})
    register_module(src.sha256, model)
    try:
        art = ExecuTorchConverter().convert(src, profile, Precision.FP32, out_dir=tmp_path / "p")
    finally:
        unregister_module(src.sha256)
    assert art.details["self_check"]["batches"] == [3, 17]
    x = np.random.default_rng(2).random((max_batch, 1, 28, 28), dtype=np.float32)
    with get_runtime("executorch").load(art, "CPU") as session:
        (got,) = session.infer({"input": x})
        with torch.no_grad():
            np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), rtol=FP32_RTOL, atol=FP32_ATOL)
        with pytest.raises(InferenceInputError, match=f"batches 1 to {max_batch}"):
            session.infer({"input": np.zeros((max_batch + 1, 1, 28, 28), np.float32)})


@needs_executorch
def test_threads_set_the_pool_for_the_session_only(lowered) -> None:
    from executorch.extension.pybindings import portable_lib

    _, fp32, _, _ = lowered
    before = portable_lib._threadpool_get_thread_count()
    with get_runtime("executorch").load(fp32, "CPU", threads=1) as session:
        assert portable_lib._threadpool_get_thread_count() == 1
        session.infer({"input": np.zeros((2, 1, 28, 28), np.float32)})
    assert portable_lib._threadpool_get_thread_count() == before
    with pytest.raises(InputError, match="positive integer"):
        get_runtime("executorch").load(fp32, "CPU", threads=0)


@needs_executorch
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:dataset 'digits' normalised with its own mean/std")
def test_pipeline_converts_validates_and_benches_edge_xnnpack(tmp_path: Path) -> None:
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.pipeline import bench, convert

    x, y = digits_images()
    model = train_tiny_cnn(x, y)
    result = convert(
        model, example_inputs=torch.from_numpy(x[:2]), dataset="digits", profiles="edge-xnnpack",
        out=tmp_path / "o", calibration_size=64,
    )
    rows = {f"{a.profile}/{a.precision}": a for a in result.artifacts if a.profile}
    for label in ("edge-xnnpack/fp32", "edge-xnnpack/int8"):
        art = rows[label]
        assert art.status is Status.VALIDATED, f"{label}: {art.status_text}"
        assert art.path == result.out_dir / "edge-xnnpack" / str(art.precision) / PROGRAM_NAME
    assert rows["edge-xnnpack/fp32"].details["validation"]["allclose_fp32"]
    fast = BenchConfig(
        timing=TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.05), batch_sizes=(1, 8),
        eval_limit=128, threads=1,
    )
    bench_rows = {r.label: r for r in bench(result, config=fast).rows}
    for label in ("edge-xnnpack/fp32", "edge-xnnpack/int8"):
        assert bench_rows[label].status == "ok", bench_rows[label]
