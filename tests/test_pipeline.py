"""End to end: a trained registry checkpoint and a custom multi-input module through convert and bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.agreement import FP32_ATOL, FP32_RTOL
from modelport.benchmark.runner import BenchConfig
from modelport.benchmark.timing import TimingConfig
from modelport.core.manifest import Manifest
from modelport.core.types import Format, Precision, Status
from modelport.errors import InputError
from modelport.pipeline import bench, convert

FAST = BenchConfig(
    timing=TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.05), batch_sizes=(1, 8),
    eval_limit=128,
)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    model = build_model("simple-mnist")
    train(model, load_dataset("digits"), epochs=2, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "simple-mnist.safetensors"
    save_state_dict(model, path)
    return path


@pytest.fixture(scope="session")
def converted(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("conv") / "artifacts"
    return convert(
        trained_checkpoint, arch="simple-mnist", out=out,
        profiles="legacy-cpu,intel-cpu,core-ultra-npu,t4", calibration_size=128,
    )


def _by_label(result) -> dict[str, object]:
    return {f"{a.profile}/{a.precision}" if a.profile else str(a.format): a for a in result.artifacts}


def test_convert_writes_validated_artifacts_and_manifest(converted) -> None:
    arts = _by_label(converted)
    assert {"pytorch", "onnx", "legacy-cpu/fp32", "legacy-cpu/int8", "intel-cpu/fp32", "intel-cpu/int8",
            "core-ultra-npu/fp16", "core-ultra-npu/int8", "t4/fp32", "t4/fp16", "t4/int8"} <= set(arts)
    for label in ("onnx", "legacy-cpu/fp32", "legacy-cpu/int8", "intel-cpu/fp32", "intel-cpu/int8",
                  "core-ultra-npu/fp16", "core-ultra-npu/int8"):
        art = arts[label]
        assert art.status is Status.VALIDATED, f"{label}: {art.status_text}"
        assert art.path.is_file() and art.size_bytes > 0
    # FP32 artifacts agree with PyTorch within the stated tolerance (max diffs recorded)
    for label in ("onnx", "legacy-cpu/fp32", "intel-cpu/fp32"):
        v = arts[label].details["validation"]
        assert v["allclose_fp32"] is True
        assert v["max_abs_diff"] < 1e-3
    # INT8 keeps top-1 agreement and accuracy
    for label in ("legacy-cpu/int8", "intel-cpu/int8"):
        v = arts[label].details["validation"]
        assert v["top1_agreement"] >= 0.95 and v["accuracy_drop"] <= 0.02
    # the NPU IR has static shapes and was checked on CPU, labelled as such
    npu = arts["core-ultra-npu/fp16"]
    assert all(isinstance(d, int) for d in npu.inputs[0].shape)
    assert "functional check" in npu.details["validation_note"]
    # TensorRT cannot exist here: unavailable, with the build bundle written
    t4 = arts["t4/fp16"]
    assert t4.status is Status.UNAVAILABLE and "tensorrt" in t4.status_detail.lower()
    assert (converted.out_dir / "t4" / "fp16" / "build_engine.sh").is_file()
    # manifest round trip
    manifest = Manifest.read(converted.out_dir)
    assert len(manifest.artifacts) == len(converted.artifacts)
    assert manifest.dataset["name"] == "digits"
    assert manifest.preprocessing is not None and manifest.preprocessing.image_size == (28, 28)
    for art in manifest.artifacts:
        if art.ok:
            from modelport.core.files import sha256_file, sha256_files

            files = [art.path.parent / f for f in art.files]
            assert art.sha256 in (sha256_file(art.path), sha256_files(files))
    assert manifest.environment["packages"]["onnxruntime"]


def test_int8_openvino_ir_is_smaller_and_fp32_is_not_fp16(converted) -> None:
    arts = _by_label(converted)
    fp32, int8, onnx = arts["intel-cpu/fp32"], arts["intel-cpu/int8"], arts["onnx"]
    assert fp32.size_bytes > 0.9 * onnx.size_bytes  # FP32 weights really stored as FP32
    assert int8.size_bytes < 0.5 * fp32.size_bytes


def test_bench_reports_every_row(converted, tmp_path: Path) -> None:
    results = bench(converted.out_dir, config=FAST, out=tmp_path, profiles="all")  # default: only what runs here
    rows = {r.label: r for r in results.rows}
    assert "pytorch/fp32 (eager)" in rows and "onnx/fp32 (export)" in rows
    for label in ("legacy-cpu/fp32", "legacy-cpu/int8", "intel-cpu/fp32", "intel-cpu/int8"):
        row = rows[label]
        assert row.status == "ok", row.status
        assert row.size_bytes > 0 and row.load_ms > 0 and row.first_inference_ms > 0
        assert row.latency[1].n >= 5 and row.latency[1].p50 > 0 and row.latency[1].p99 >= row.latency[1].p50
        assert row.throughput[8] > 0
        assert 0.8 <= row.accuracy <= 1.0
        assert row.agreement["top1_agreement"] >= 0.95
    assert rows["legacy-cpu/fp32"].agreement["max_abs_diff"] <= FP32_ATOL + FP32_RTOL * 100
    assert rows["t4/int8"].status.startswith("unavailable")
    assert rows["core-ultra-npu/fp16"].status.startswith("unavailable")
    for name in ("results.json", "results.csv", "results.md"):
        assert (tmp_path / name).is_file()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == "modelport.results" and data["environment"]["cpu"]
    assert any(r["label"] == "intel-cpu/int8" and r["latency"] for r in data["rows"])


class TwoInputEncoder(torch.nn.Module):
    """A transformer-shaped toy: token ids + attention mask → a pooled embedding (no class labels)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, 16)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = x.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
        return torch.tanh(self.proj(pooled))


def test_custom_module_with_named_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoInputEncoder().eval()
    rng = np.random.default_rng(0)
    batches = [
        {"input_ids": rng.integers(0, 100, (4, 12)).astype(np.int64), "attention_mask": np.ones((4, 12), np.int64)}
        for _ in range(4)
    ]
    examples = {k: torch.from_numpy(v) for k, v in batches[0].items()}
    result = convert(
        model, example_inputs=examples, calibration_data=batches, out=tmp_path / "enc",
        profiles="legacy-cpu,intel-cpu", precisions="fp32",
    )
    arts = _by_label(result)
    assert arts["onnx"].status is Status.VALIDATED
    assert [t.name for t in arts["onnx"].inputs] == ["input_ids", "attention_mask"]
    assert arts["intel-cpu/fp32"].status is Status.VALIDATED, arts["intel-cpu/fp32"].status_text
    results = bench(result, config=FAST)
    rows = {r.label: r for r in results.rows}
    row = rows["legacy-cpu/fp32"]
    assert row.status == "ok" and row.accuracy is None
    assert row.agreement["top1_agreement"] is None and row.agreement["cosine"] > 0.9999


def test_out_folder_is_never_clobbered(trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        convert(trained_checkpoint, arch="simple-mnist", out=out, profiles="legacy-cpu")
    with pytest.raises(InputError, match="did not make it"):
        convert(trained_checkpoint, arch="simple-mnist", out=out, profiles="legacy-cpu", overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_failed_run_leaves_nothing_behind(trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(InputError):
        convert(trained_checkpoint, arch="simple-mnist", out=out, profiles="legacy-cpu", dataset="no-such-dataset")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_unsupported_precision_is_reported_not_dropped(trained_checkpoint: Path, tmp_path: Path) -> None:
    result = convert(
        trained_checkpoint, arch="simple-mnist", out=tmp_path / "o", profiles="core-ultra-gpu", precisions="fp32,fp16",
        calibration_size=16,
    )
    assert any("core-ultra-gpu/fp32" in s for s in result.skipped)
    assert [a.precision for a in result.artifacts if a.profile] == [Precision.FP16]
    assert result.artifacts[-1].format is Format.OPENVINO_IR


def test_live_registry_module_records_how_to_rebuild_it(tmp_path: Path) -> None:
    """A registry model passed as a module with ``arch`` gets the same model_kwargs as its checkpoint would."""
    from modelport.models import build_model

    model = build_model("simple-mnist", num_classes=10).eval()
    result = convert(model, arch="simple-mnist", profiles="legacy-cpu", precisions="fp32", out=tmp_path / "o")
    assert result.manifest.model["model_kwargs"] == {"num_classes": 10, "in_channels": 1, "image_size": 28}
    assert all(a.ok for a in result.artifacts)
    # a 7-class model scored on 10-class digits is no accuracy: an error, not a "validated" row (issue 10)
    with pytest.raises(InputError, match="7 class scores, but dataset 'digits' has 10 classes"):
        convert(build_model("simple-mnist", num_classes=7).eval(), arch="simple-mnist", profiles="legacy-cpu",
                precisions="fp32", out=tmp_path / "seven")
    assert not (tmp_path / "seven").exists()
