"""Every CPU-dependent decision under each of the three CPU classes this project's machines come in, whatever the
machine running the tests is: AVX2-only AMD EPYC (the ``legacy-cpu`` class), AMD EPYC with AVX-512 VNNI/BF16, and
Intel Xeon with AMX. The classes are recorded /proc/cpuinfo flag lists, applied through ``MODELPORT_CPU_FLAGS`` (the
override every decision reads); the hardware record (``override=False``) reads a recorded cpuinfo file. The
expected answer for each class is written in the table below, and where a decision needs speed figures it is fed
recorded ones, never live timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelport.core.cpu import CPU_FLAGS_ENV, cpu_info


@dataclass(frozen=True)
class CpuClass:
    name: str
    model: str
    flags: str  # as /proc/cpuinfo lists them (the ones that matter, and a few that do not)
    int8_class: str
    vnni: bool
    bf16: bool
    # recorded interleaved rounds (ms) of FP32 and the best INT8 (ONNX Runtime QOperator+reduce_range) on a small
    # CNN at batch 1, and the verdict they give
    fp32_rounds: tuple[float, ...]
    int8_rounds: tuple[float, ...]
    verdict: str


CLASSES = (
    CpuClass("avx2-epyc", "AMD EPYC 7302 16-Core Processor",
             "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni", "AVX2 without VNNI", False, False,
             (0.41, 0.42, 0.40, 0.41, 0.43), (0.52, 0.50, 0.51, 0.53, 0.50), "slower"),
    CpuClass("vnni-epyc", "AMD EPYC 9R14 96-Core Processor",
             "fpu sse2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512_vbmi2",
             "VNNI", True, True,
             (0.41, 0.42, 0.40, 0.41, 0.43), (0.15, 0.14, 0.15, 0.16, 0.14), "pays"),
    CpuClass("amx-xeon", "Intel(R) Xeon(R) Platinum 8488C",
             "fpu sse2 avx f16c fma avx2 avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_bf16 avx512_fp16 "
             "amx_bf16 amx_tile amx_int8", "AMX", True, True,
             (0.30, 0.31, 0.29, 0.32, 0.30), (0.29, 0.32, 0.30, 0.30, 0.31), "tie"),
)


@pytest.fixture(params=CLASSES, ids=[c.name for c in CLASSES])
def cpu_class(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CpuClass:
    c: CpuClass = request.param
    monkeypatch.setenv(CPU_FLAGS_ENV, c.flags)
    return c


def _cpuinfo(tmp_path: Path, c: CpuClass) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {c.model}\nflags\t\t: {c.flags}\n", encoding="utf-8")
    return path


def test_int8_class_and_doctor(cpu_class: CpuClass) -> None:
    from modelport.pipeline.doctor import cpu_fact

    info = cpu_info()
    assert (info.int8_class, info.vnni, info.source) == (cpu_class.int8_class, cpu_class.vnni, CPU_FLAGS_ENV)
    fact = cpu_fact()
    assert fact.int8_class == cpu_class.int8_class and fact.bf16_units == cpu_class.bf16
    assert ("reduce_range" in fact.ort_int8) == (not cpu_class.vnni)
    assert ("overflow_fix enable" in fact.openvino_int8) == (not cpu_class.vnni)


def test_bf16_is_offered_only_on_the_classes_with_bf16_units(cpu_class: CpuClass) -> None:
    """bf16 artifacts (OpenVINO INFERENCE_PRECISION_HINT=bf16, AOTInductor bf16) exist only where the CPU has BF16
    units; elsewhere the refusal says why, and the optimize cache key tells the classes apart."""
    from modelport.backends.bf16 import bf16_problem, require_bf16
    from modelport.errors import RuntimeUnavailableError
    from modelport.pipeline.optimize.search import _cpu_key

    assert (bf16_problem() is None) is cpu_class.bf16
    assert _cpu_key() == {"int8_class": cpu_class.int8_class, "bf16_units": cpu_class.bf16}
    if cpu_class.bf16:
        require_bf16("intel-cpu")
    else:
        with pytest.raises(RuntimeUnavailableError, match="this CPU has no BF16 units"):
            require_bf16("intel-cpu")


def test_int8_lowering_defaults(cpu_class: CpuClass) -> None:
    """intel-cpu targets this machine's CPU; legacy-cpu always targets AVX2 without VNNI, whatever converts it."""
    from modelport.backends.lowering import LoweringPlan, resolve_options
    from modelport.core.profiles import get_profile

    keys = frozenset({"reduce_range", "quant_format", "overflow_fix"})
    here = resolve_options(LoweringPlan(), get_profile("intel-cpu"), keys=keys)
    expected = {"reduce_range": not cpu_class.vnni, "quant_format": "qdq" if cpu_class.vnni else "qoperator",
                "overflow_fix": "first_layer_only" if cpu_class.vnni else "enable"}
    assert {k: getattr(here, k) for k in keys} == expected
    assert here.target_vnni is cpu_class.vnni and "MODELPORT_CPU_FLAGS" in here.sources["target_cpu"]
    legacy = resolve_options(LoweringPlan(), get_profile("legacy-cpu"), keys=keys)
    assert (legacy.reduce_range, legacy.quant_format, legacy.target_vnni) == (True, "qoperator", False)


def test_qat_overflow_fix_default(cpu_class: CpuClass) -> None:
    from modelport.compression.quantization import _qat_overflow_fix

    value, why = _qat_overflow_fix(None)
    assert value == ("first_layer_only" if cpu_class.vnni else "enable"), why
    assert _qat_overflow_fix("disable") == ("disable", "asked for")


def test_onnx_runtime_notes_an_8_bit_int8_artifact_only_where_u8s8_saturates(cpu_class: CpuClass,
                                                                            tmp_path: Path) -> None:
    import torch

    from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime
    from modelport.core.types import Precision
    from modelport.export.onnx import export_onnx

    art = export_onnx(torch.nn.Linear(4, 2).eval(), {"input": torch.zeros(1, 4)}, tmp_path / "m" / "model.onnx")
    wide = art.replace(precision=Precision.INT8, details={**art.details, "reduce_range": False})
    with OnnxRuntimeRuntime().load(wide) as session:
        noted = any("lacks VNNI" in n for n in session.notes)
    assert noted == (not cpu_class.vnni)


def test_int8_verdict_from_recorded_rounds(cpu_class: CpuClass, tmp_path: Path) -> None:
    """The verdict comes from the figures, and the statement names the CPU's features; no live timing."""
    from modelport.benchmark.environment import _cpuinfo as cpu_record
    from modelport.pipeline.optimize.finals import _int8_verdict
    from modelport.pipeline.optimize.records import MEASURED, Trial

    def trial(name: str, precision: str, rounds: tuple[float, ...], steps: list[dict[str, Any]]) -> Trial:
        t = Trial(name, "legacy-cpu", precision, "onnxruntime", fate=MEASURED, accuracy=0.9, drop_pts=0.0,
                  steps=steps, p50_ms=sorted(rounds)[2], size_bytes=1000)
        t.final = {"p50_ms": sorted(rounds)[2], "rounds_ms": list(rounds)}
        return t

    record = cpu_record(_cpuinfo(tmp_path, cpu_class))
    decided = record.get("decisions_use") or {}
    assert decided.get("int8_class", record["int8_class"]) == cpu_class.int8_class
    from types import SimpleNamespace

    s = SimpleNamespace(ctx=SimpleNamespace(cpu={"model": record["model"], "flags": record["flags"]}, batch=1))
    fp32 = trial("fp32", "fp32", cpu_class.fp32_rounds, [])
    int8 = trial("ort-qoperator-rr", "int8", cpu_class.int8_rounds, [{"step": "quantize", "stage": "lowering"}])
    v = _int8_verdict(s, [fp32, int8], winner=fp32)  # type: ignore[arg-type]
    assert v is not None and v["verdict"] == cpu_class.verdict and v["pays"] == (cpu_class.verdict == "pays")
    head = {"pays": "INT8 pays here", "tie": "INT8 is not measurably faster than FP32 on this CPU",
            "slower": "INT8 is slower than FP32 on this CPU"}[cpu_class.verdict]
    assert v["statement"].startswith(head), v["statement"]
    assert cpu_class.model in v["statement"]
    assert f"amx_int8 {'yes' if cpu_class.int8_class == 'AMX' else 'no'}" in v["statement"]


def test_fleet_labels_record_the_hardware_class(cpu_class: CpuClass, tmp_path: Path) -> None:
    from modelport.fleet.node import machine_facts, machine_hash, node_labels

    facts = machine_facts(cpu_info(_cpuinfo(tmp_path, cpu_class), override=False))
    labels = node_labels(facts)
    assert labels["modelport.int8"] == cpu_class.int8_class.replace(" ", "_")
    assert labels["modelport.cpu"].startswith(cpu_class.model.split("(")[0].split()[0])
    assert labels["modelport.machine"] == machine_hash(facts)
    assert ("amx_int8" in facts["cpu_flags"]) == (cpu_class.int8_class == "AMX")
