"""core.cpu: one reader of the CPU's INT8 facts, used by the environment record and the INT8 decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.core.cpu import CPU_FLAGS_ENV, cpu_info, parse_cpuinfo

AVX2_ONLY = "processor : 0\nmodel name : AMD EPYC 7302\nflags : fpu sse2 avx avx2 fma\n"
VNNI = "processor : 0\nmodel name : Intel Xeon\nflags : avx2 avx512f avx512_vnni avx512_bf16\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_int8_class_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    legacy = cpu_info(_write(tmp_path, AVX2_ONLY))
    assert (legacy.model, legacy.avx2, legacy.vnni, legacy.avx512) == ("AMD EPYC 7302", True, False, False)
    assert legacy.int8_class == "AVX2 without VNNI"
    (tmp_path / "b").mkdir()
    modern = cpu_info(_write(tmp_path / "b", VNNI))
    assert modern.vnni and modern.avx512 and not modern.amx and modern.int8_class == "VNNI"
    assert parse_cpuinfo("Features : neon asimd\n")[1] == frozenset({"neon", "asimd"})


def test_override_changes_decisions_not_the_hardware_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.benchmark.environment import _cpuinfo

    path = _write(tmp_path, VNNI)
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2, fma")
    decided = cpu_info(path)
    assert not decided.vnni and decided.source == CPU_FLAGS_ENV
    assert cpu_info(path, override=False).vnni
    record = _cpuinfo(path)
    assert record["flags"]["avx512_vnni"] is True and record["int8_class"] == "VNNI"
    assert record["decisions_use"]["int8_class"] == "AVX2 without VNNI"


def test_unreadable_cpuinfo_is_unknown_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    info = cpu_info(tmp_path / "missing")
    assert not info.known and not info.vnni and info.int8_class == "unknown CPU features"
    assert info.record()["flags"]["avx2"] is None


def test_onnx_runtime_says_when_an_int8_artifact_for_vnni_runs_on_a_cpu_without(monkeypatch: pytest.MonkeyPatch,
                                                                                tmp_path: Path) -> None:
    """The decision is taken again where the artifact runs: a VNNI-made INT8 file on an AVX2-only CPU is noted."""
    import torch

    from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime
    from modelport.core.types import Precision
    from modelport.export.onnx import export_onnx

    art = export_onnx(torch.nn.Linear(4, 2).eval(), {"input": torch.zeros(1, 4)}, tmp_path / "m" / "model.onnx")
    int8 = art.replace(precision=Precision.INT8, details={**art.details, "reduce_range": False})
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,fma")
    assert any("lacks VNNI" in n for n in OnnxRuntimeRuntime().load(int8).notes)
    safe = int8.replace(details={**int8.details, "reduce_range": True})
    assert OnnxRuntimeRuntime().load(safe).notes == []
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,avx512_vnni")
    assert OnnxRuntimeRuntime().load(int8).notes == []
