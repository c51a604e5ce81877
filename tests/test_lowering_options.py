"""backends.lowering: the INT8 settings defined once and resolved once (step > profile > default), with the
defaults that follow the target CPU (VNNI or not) and the model (attention or not) recorded with their source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from modelport.backends.lowering import (
    COMMON_KEYS,
    ONNXRUNTIME_KEYS,
    OPENVINO_KEYS,
    Lowering,
    has_attention,
    plan_lowering,
    resolve_options,
    target_cpu,
)
from modelport.core.cpu import CPU_FLAGS_ENV, CpuInfo
from modelport.core.profiles import get_profile
from modelport.core.types import Precision
from modelport.errors import ConversionError, InputError
from modelport.export.onnx import export_onnx

ORT = COMMON_KEYS | ONNXRUNTIME_KEYS
OV = COMMON_KEYS | OPENVINO_KEYS
AVX2 = CpuInfo("AMD EPYC 7302", frozenset({"avx2", "fma"}), "/proc/cpuinfo")
VNNI = CpuInfo("Xeon", frozenset({"avx2", "avx512f", "avx512_vnni"}), "/proc/cpuinfo")


def _plan(**settings):
    return plan_lowering({"step": "quantize", "precision": "int8", "quantization": settings}, Precision.INT8, "x",
                         ORT | OV)


def test_defaults_follow_the_target_cpu() -> None:
    auto = dataclasses.replace(get_profile("intel-cpu"), options={})
    old = resolve_options(_plan(), auto, keys=ORT | OV, cpu=AVX2)
    assert (old.reduce_range, old.quant_format, old.overflow_fix, old.target_vnni) == (True, "qoperator", "enable", False)
    assert "AVX2 without VNNI" in old.sources["reduce_range"] and "AMD EPYC 7302" in old.sources["target_cpu"]
    new = resolve_options(_plan(), auto, keys=ORT | OV, cpu=VNNI)
    assert (new.reduce_range, new.quant_format, new.overflow_fix) == (False, "qdq", "first_layer_only")


def test_legacy_cpu_declares_its_cpu_so_the_converting_machine_does_not_matter() -> None:
    legacy = get_profile("legacy-cpu")
    for cpu in (AVX2, VNNI):
        opts = resolve_options(_plan(), legacy, keys=ORT, cpu=cpu)
        assert opts.reduce_range and opts.quant_format == "qoperator" and not opts.target_vnni
        assert "int8_target_cpu" in opts.sources["target_cpu"]


def test_step_beats_profile_beats_default_and_each_source_is_said() -> None:
    legacy = dataclasses.replace(get_profile("legacy-cpu"), options={"int8_target_cpu": "avx2", "int8_format": "qdq",
                                                                     "int8_calibration": "Entropy"})
    opts = resolve_options(_plan(calibrate_method="percentile"), legacy, keys=ORT, cpu=VNNI)
    assert opts.quant_format == "qdq" and opts.sources["quant_format"] == "profile legacy-cpu: int8_format"
    assert opts.calibrate_method == "percentile" and opts.sources["calibrate_method"] == "step quantize"
    assert opts.per_channel and opts.sources["per_channel"] == "default"
    record = opts.record(ORT)
    assert "preset" not in record["settings"] and record["sources"]["target_cpu"]
    with pytest.raises(InputError, match="int8_format 'qint4'"):
        resolve_options(_plan(), dataclasses.replace(legacy, options={"int8_format": "qint4"}), keys=ORT)
    with pytest.raises(InputError, match="int8_target_cpu 'arm'"):
        target_cpu(dataclasses.replace(legacy, options={"int8_target_cpu": "arm"}))


def test_cpu_override_reaches_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2")
    cpu = target_cpu(dataclasses.replace(get_profile("intel-cpu"), options={}))
    assert not cpu.vnni and "MODELPORT_CPU_FLAGS" in cpu.source


def test_lowering_carries_validation_beside_the_json_not_inside() -> None:
    step = {"step": "quantize-accuracy", "precision": "int8", "quantization": {"max_drop": 0.01}}
    lowering = Lowering.from_dict(step, validation="feeds")  # type: ignore[arg-type]
    assert dict(lowering) == step and lowering.validation == "feeds"
    assert plan_lowering(lowering, Precision.INT8, "openvino", OV).validation_feeds == "feeds"
    with pytest.raises(ConversionError, match="Unknown lowering option"):
        Lowering.from_dict({**step, "validation_feeds": object()})
    assert not Lowering.from_dict(None, validation="feeds")  # feeds alone ask for nothing  # type: ignore[arg-type]


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layer(self.emb(input_ids)).mean(1)


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=-1)


def test_attention_is_found_in_a_transformer_and_not_in_a_softmax_classifier(tmp_path: Path) -> None:
    enc = export_onnx(_Encoder().eval(), {"input_ids": torch.randint(0, 50, (2, 6))}, tmp_path / "enc" / "m.onnx")
    clf = export_onnx(_Classifier().eval(), {"x": torch.randn(2, 8)}, tmp_path / "clf" / "m.onnx")
    assert has_attention(enc.path) and not has_attention(clf.path)
    opts = resolve_options(_plan(), get_profile("intel-cpu"), keys=OV, has_attention=True, cpu=VNNI)
    assert opts.model_type == "transformer" and "attention" in opts.sources["model_type"]


def test_next_steps_offer_only_what_the_runtime_can_do() -> None:
    from modelport.backends.lowering import int8_next_steps

    ort = int8_next_steps(runtime="onnxruntime", mode="static", layers=["node_fc"], calibration_samples=64,
                          labelled=False)
    assert "ignored_scope = {patterns = ['node_fc(/.*)?']}" in ort[0] and "--calibration-size 300" in ort[1]
    assert "OpenVINO profile" in ort[2] and "--int8-mode weight-only" in ort[3]
    spread = int8_next_steps(runtime="openvino", mode="static", layers=[], calibration_samples=400, labelled=True,
                             spread=True)
    assert spread[0].startswith("weight-only INT8") and not any("ignored_scope" in s for s in spread)
    trt = int8_next_steps(runtime="tensorrt", mode="static", layers=[], calibration_samples=400, labelled=True)
    assert not any("weight-only" in s for s in trt)
