"""AOTInductor profiles (cpu-aoti, cuda-aoti): real torch.export + AOTInductor compiles with the C++ compiler here,
real packages loaded with aoti_load_package. The refusal paths run on hostile/garbage files that must never be
loaded; the CUDA path skips without a GPU (this machine has none) and is written to pass on one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.agreement import FP32_ATOL, FP32_RTOL
from modelport.benchmark.runner import BenchConfig
from modelport.benchmark.timing import TimingConfig
from modelport.backends import get_converter
from modelport.backends.aoti.convert import (
    PACKAGE_NAME,
    SIDECAR_NAME,
    SIDECAR_SCHEMA,
    AotiConverter,
    aoti_availability,
    check_sidecar,
    current_environment,
    sidecar_path,
)
from modelport.core.files import sha256_file
from modelport.core.profiles import get_profile, parse_profile_list
from modelport.core.types import Artifact, Format, Precision, Status, TensorSpec
from modelport.errors import ConversionError, InferenceInputError, RuntimeUnavailableError, ValidationError
from modelport.pipeline import bench, convert
from modelport.backends import get_runtime

from conftest import make_linear_onnx

HAS_CUDA = torch.cuda.is_available()
CAN_BUILD, BUILD_WHY = aoti_availability("CPU", compile=True)
needs_compiler = pytest.mark.skipif(not CAN_BUILD, reason=f"cannot build AOTInductor packages here: {BUILD_WHY}")
FAST = BenchConfig(
    timing=TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.05), batch_sizes=(1, 8),
    eval_limit=128, threads=1,
)


def _rows(result) -> dict[str, Artifact]:
    return {f"{a.profile}/{a.precision}" if a.profile else str(a.format): a for a in result.artifacts}


# ------------------------------------------------------------------------------------------- profiles, registry


def test_profiles_are_registered_but_left_out_of_all() -> None:
    cpu, cuda = get_profile("cpu-aoti"), get_profile("cuda-aoti")
    assert (cpu.runtime, cpu.format, cpu.device, cpu.precisions) == ("aoti", Format.AOTI_PACKAGE, "CPU",
                                                                       (Precision.FP32, Precision.BF16))
    assert (cuda.runtime, cuda.device, cuda.precisions) == ("aoti", "cuda", (Precision.FP32, Precision.FP16))
    assert cpu.options["max_batch"] == 256
    names = [p.name for p in parse_profile_list("all")]
    assert "cpu-aoti" not in names and "cuda-aoti" not in names and "intel-cpu" in names
    assert [p.name for p in parse_profile_list(None)] == names
    assert [p.name for p in parse_profile_list("cpu-aoti,intel-cpu")] == ["cpu-aoti", "intel-cpu"]
    assert get_converter("aoti").source is Format.PYTORCH


def test_runtime_reports_cpu_and_why_not_cuda() -> None:
    rt = get_runtime("aoti")
    ok, why = rt.availability()
    assert ok and torch.__version__ in why
    assert rt.devices()[0] == "CPU"
    assert rt.device_available("CPU") == (True, "")
    cuda_ok, cuda_why = rt.device_available("cuda")
    assert cuda_ok is HAS_CUDA
    if not HAS_CUDA:
        assert "CUDA" in cuda_why and "CUDA packages cannot run here" in why


# ------------------------------------------------------------------------------------------- sidecar matching


def _sidecar(**changes: object) -> dict:
    side = {"schema": SIDECAR_SCHEMA, **current_environment("CPU")}
    side.update(changes)
    return side


def test_sidecar_of_this_machine_matches() -> None:
    here = current_environment("CPU")
    assert check_sidecar(_sidecar(), here) is None
    # the local build tag (+cpu / +cu130) is the CUDA flavour of one release, not another ABI
    assert check_sidecar(_sidecar(torch_version=here["torch_version"].split("+")[0] + "+cpu"), here) is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"torch_version": "2.5.0"}, ["torch 2.5.0", "install torch==2.5.0"]),
        ({"device": "cuda", "compute_capability": "7.5"}, ["compiled for cuda", "run on cpu"]),
        ({"machine": "aarch64"}, ["machine aarch64"]),
        ({"cpu_isa": "amx_tile avx512"}, ["AMX_TILE AVX512 instruction set"]),
        ({"cpu_flags": ["fpu", "sse2", "made_up_feature"]}, ["made_up_feature", "illegal instruction"]),
        ({"schema": "something-else"}, ["schema"]),
        ({"torch_version": ""}, ["lacks torch_version"]),
    ],
)
def test_sidecar_mismatch_is_refused_with_the_reason(changes: dict, words: list[str]) -> None:
    reason = check_sidecar(_sidecar(**changes), current_environment("CPU"))
    assert reason is not None
    for w in words:
        assert w in reason
    assert "rebuild the package on this machine" in reason


def test_portable_march_is_not_held_to_the_build_cpu_flags() -> None:
    here = current_environment("CPU")
    side = _sidecar(cpu_flags=[*here["cpu_flags"], "made_up_feature"], march="x86-64-v3")
    assert check_sidecar(side, here) is None
    assert "not a JSON object" in (check_sidecar(["a", "list"], here) or "")


def _garbage_package(folder: Path, sidecar: dict | None) -> Artifact:
    """A 'package' that is not one: the runtime must refuse it before handing it to the loader."""
    folder.mkdir(parents=True, exist_ok=True)
    pkg = folder / PACKAGE_NAME
    pkg.write_bytes(b"not a zip, not a library " * 10)
    if sidecar is not None:
        sidecar_path(pkg).write_text(json.dumps(sidecar))
    spec = (TensorSpec("input", ("batch", 4)),)
    return Artifact(path=pkg, format=Format.AOTI_PACKAGE, precision=Precision.FP32, inputs=spec, outputs=spec, profile="cpu-aoti")


def test_package_without_sidecar_is_never_loaded(tmp_path: Path) -> None:
    art = _garbage_package(tmp_path / "a", None)
    with pytest.raises(RuntimeUnavailableError, match="has no sidecar"):
        with get_runtime("aoti").load(art, "CPU"):
            pass


def test_foreign_package_is_refused_before_loading(tmp_path: Path) -> None:
    art = _garbage_package(tmp_path / "b", _sidecar(torch_version="2.4.1+cu121"))
    with pytest.raises(RuntimeUnavailableError, match=r"compiled with torch 2\.4\.1\+cu121"):
        with get_runtime("aoti").load(art, "CPU"):
            pass
    (tmp_path / "b" / SIDECAR_NAME).write_text("{not json")
    with pytest.raises(RuntimeUnavailableError, match="not valid JSON"):
        with get_runtime("aoti").load(art, "CPU"):
            pass


def test_package_that_is_not_the_one_described_is_refused(tmp_path: Path) -> None:
    art = _garbage_package(tmp_path / "c", _sidecar(package_sha256="0" * 64, precision="fp32"))
    with pytest.raises(ValidationError, match="sha256 differs"):
        with get_runtime("aoti").load(art, "CPU"):
            pass


def test_converter_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    spec = (TensorSpec("input", ("batch", 1, 28, 28)),)
    onnx_art = Artifact(path=tmp_path / "m.onnx", format=Format.ONNX, precision=Precision.FP32, inputs=spec, outputs=())
    with pytest.raises(ConversionError, match="not a onnx artifact"):
        AotiConverter().convert(onnx_art, get_profile("cpu-aoti"), Precision.FP32, out_dir=tmp_path / "x")
    torch_art = onnx_art.replace(format=Format.PYTORCH, details={"arch": "simple-mnist"})
    with pytest.raises(ConversionError, match="fp16 on cpu"):
        AotiConverter().convert(torch_art, get_profile("cpu-aoti"), Precision.FP16, out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU message; this machine has a CUDA GPU")
def test_cuda_profile_says_what_is_missing(tmp_path: Path) -> None:
    spec = (TensorSpec("input", ("batch", 1, 28, 28)),)
    torch_art = Artifact(
        path=tmp_path / "m.safetensors", format=Format.PYTORCH, precision=Precision.FP32, inputs=spec, outputs=(),
        details={"arch": "simple-mnist"},
    )
    with pytest.raises(RuntimeUnavailableError, match="CUDA"):
        AotiConverter().convert(torch_art, get_profile("cuda-aoti"), Precision.FP16, out_dir=tmp_path / "x")


def test_onnx_input_gives_an_unavailable_row(tmp_path: Path) -> None:
    lin = make_linear_onnx(tmp_path / "lin.onnx")
    data = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    result = convert(lin.path, out=tmp_path / "out", profiles="cpu-aoti,legacy-cpu", precisions="fp32", calibration_data=data)
    rows = _rows(result)
    aoti = rows["cpu-aoti/fp32"]
    assert aoti.status is Status.UNAVAILABLE
    assert aoti.status_detail.startswith("needs the PyTorch model") and ".onnx input" in aoti.status_detail
    assert rows["legacy-cpu/fp32"].status is Status.VALIDATED


# ------------------------------------------------------------------------------------------- real compiles


@pytest.fixture(scope="module")
def aoti_converted(tmp_path_factory: pytest.TempPathFactory):
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    torch.manual_seed(0)
    model = build_model("simple-mnist")
    train(model, load_dataset("digits"), epochs=1, progress=False)
    ckpt = tmp_path_factory.mktemp("ckpt") / "simple-mnist.safetensors"
    save_state_dict(model, ckpt)
    out = tmp_path_factory.mktemp("aoti") / "artifacts"
    return convert(ckpt, arch="simple-mnist", out=out, profiles="cpu-aoti"), model.eval()


@pytest.mark.slow
@needs_compiler
def test_cpu_package_is_built_validated_and_described(aoti_converted) -> None:
    result, _ = aoti_converted
    rows = _rows(result)
    art = rows["cpu-aoti/fp32"]
    assert art.status is Status.VALIDATED, art.status_text
    assert art.path == result.out_dir / "cpu-aoti" / "fp32" / PACKAGE_NAME and art.path.is_file()
    assert art.parent_sha256 == rows["pytorch"].sha256  # lowered from the PyTorch reference, not the ONNX
    assert art.sha256 == sha256_file(art.path) and art.size_bytes == art.path.stat().st_size
    v = art.details["validation"]
    assert v["allclose_fp32"] and v["top1_agreement"] == 1.0 and v["accuracy_drop"] == 0.0 and v["samples"] == 360
    assert v["accuracy"] > 0.5  # trained for an epoch on digits
    assert art.details["self_check"]["allclose_fp32"] and art.details["compile_seconds"] > 0
    side = json.loads((art.path.parent / SIDECAR_NAME).read_text())
    assert side["schema"] == SIDECAR_SCHEMA and side["torch_version"] == torch.__version__ and side["device"] == "cpu"
    assert side["package_sha256"] == art.sha256 and side["precision"] == "fp32"
    assert side["dynamic_shapes"] == {"batch": {"axis": 0, "min": 1, "max": 256}}
    assert side["cpu_isa"] in side["cpu_isas_supported"] and side["march"] == "native"
    # the manifest round-trips the row
    from modelport.core.manifest import Manifest

    again = {f"{a.profile}/{a.precision}": a for a in Manifest.read(result.out_dir).artifacts if a.profile}
    assert again["cpu-aoti/fp32"].format is Format.AOTI_PACKAGE and again["cpu-aoti/fp32"].sha256 == art.sha256


@pytest.mark.slow
@needs_compiler
def test_package_runs_any_batch_in_range_like_pytorch(aoti_converted) -> None:
    result, model = aoti_converted
    art = _rows(result)["cpu-aoti/fp32"]
    before = torch.get_num_threads()
    rng = np.random.default_rng(1)
    with get_runtime("aoti").load(art, "CPU", threads=1) as session:
        assert torch.get_num_threads() == 1
        for batch in (1, 7, 256):
            x = rng.random((batch, 1, 28, 28), dtype=np.float32)
            (got,) = session.infer({"input": x})
            with torch.inference_mode():
                want = model(torch.from_numpy(x)).numpy()
            assert got.shape == (batch, 10)
            np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)
        with pytest.raises(InferenceInputError, match="batches 1 to 256"):
            session.infer({"input": np.zeros((257, 1, 28, 28), np.float32)})
        with pytest.raises(InferenceInputError, match="has size 14 on axis 2"):
            session.infer({"input": np.zeros((1, 1, 14, 28), np.float32)})
    assert torch.get_num_threads() == before


@pytest.mark.slow
@needs_compiler
def test_copied_package_is_checked_against_its_sidecar(aoti_converted, tmp_path: Path) -> None:
    result, _ = aoti_converted
    art = _rows(result)["cpu-aoti/fp32"]
    shutil.copytree(art.path.parent, tmp_path / "p")
    copy = art.replace(path=tmp_path / "p" / PACKAGE_NAME)
    with open(copy.path, "ab") as fh:  # one byte more: not the package that was validated
        fh.write(b"\0")
    with pytest.raises(ValidationError, match="sha256 differs"):
        with get_runtime("aoti").load(copy, "CPU"):
            pass
    shutil.copyfile(art.path, copy.path)
    side = json.loads((tmp_path / "p" / SIDECAR_NAME).read_text())
    side["cpu_isa"] = "asimd"  # built for an ARM vector ISA
    (tmp_path / "p" / SIDECAR_NAME).write_text(json.dumps(side))
    with pytest.raises(RuntimeUnavailableError, match="ASIMD instruction set"):
        with get_runtime("aoti").load(copy, "CPU"):
            pass


@pytest.mark.slow
@needs_compiler
def test_bench_measures_the_package(aoti_converted, tmp_path: Path) -> None:
    result, _ = aoti_converted
    results = bench(result, out=tmp_path / "bench", config=FAST, profiles="all")
    rows = {r.label: r for r in results.rows}
    row = rows["cpu-aoti/fp32"]
    assert row.status == "ok" and row.runtime == "aoti", row.status
    assert set(row.latency) == {1, 8} and row.latency[1].p50 > 0
    assert row.agreement["allclose_fp32"] and row.accuracy == rows["pytorch/fp32 (eager)"].accuracy


class TwoHeads(torch.nn.Module):
    """Token ids + mask in, a dict of two outputs: named inputs and several outputs through the package."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.cls = torch.nn.Linear(8, 5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = x.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
        return {"logits": self.cls(pooled), "embedding": torch.tanh(pooled)}


@pytest.mark.slow
@needs_compiler
def test_python_api_module_with_named_inputs_and_dict_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoHeads().eval()
    rng = np.random.default_rng(0)
    batches = [
        {"input_ids": rng.integers(0, 50, (4, 6)).astype(np.int64), "attention_mask": np.ones((4, 6), np.int64)}
        for _ in range(3)
    ]
    examples = {k: torch.from_numpy(v) for k, v in batches[0].items()}
    result = convert(model, example_inputs=examples, calibration_data=batches, out=tmp_path / "m", profiles="cpu-aoti")
    art = _rows(result)["cpu-aoti/fp32"]
    assert art.status is Status.VALIDATED, art.status_text
    assert [t.name for t in art.inputs] == ["input_ids", "attention_mask"]
    feed = {"input_ids": rng.integers(0, 50, (3, 6)).astype(np.int64), "attention_mask": np.ones((3, 6), np.int64)}
    with get_runtime("aoti").load(art, "CPU") as session:
        logits, emb = session.infer(feed)
    with torch.inference_mode():
        want = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    np.testing.assert_allclose(logits, want["logits"].numpy(), rtol=FP32_RTOL, atol=FP32_ATOL)
    np.testing.assert_allclose(emb, want["embedding"].numpy(), rtol=FP32_RTOL, atol=FP32_ATOL)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of torch (none on this machine)")
def test_cuda_packages_fp32_and_fp16(tmp_path: Path) -> None:
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict

    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_state_dict(build_model("simple-mnist"), ckpt)
    result = convert(ckpt, arch="simple-mnist", out=tmp_path / "out", profiles="cuda-aoti")
    rows = _rows(result)
    for precision in ("fp32", "fp16"):
        art = rows[f"cuda-aoti/{precision}"]
        assert art.status is Status.VALIDATED, art.status_text
        side = json.loads((art.path.parent / SIDECAR_NAME).read_text())
        assert side["device"] == "cuda" and side["gpu_name"] == torch.cuda.get_device_name(0)
        with get_runtime("aoti").load(art, "cuda:0") as session:
            (out,) = session.infer({"input": np.zeros((5, 1, 28, 28), np.float32)})
            session.synchronize()
        assert out.shape == (5, 10) and out.dtype == np.float32
        with pytest.raises(RuntimeUnavailableError, match="compiled for cuda"):
            with get_runtime("aoti").load(art, "CPU"):
                pass
