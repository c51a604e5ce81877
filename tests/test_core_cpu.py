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
