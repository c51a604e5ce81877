"""What can run on this machine, and why not the rest: the facts behind ``modelport doctor`` and the default
profile choice. The CLI only renders them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeFact:
    name: str
    label: str
    available: bool
    detail: str  # the version when available, else why not and the fix
    devices: tuple[str, ...]


@dataclass(frozen=True)
class ProfileFact:
    name: str
    runtime: str
    device: str
    precisions: tuple[str, ...]
    runnable: bool
    reason: str  # empty when runnable


@dataclass(frozen=True)
class CpuFact:
    """The CPU as modelport's INT8 decisions see it, and what those decisions are for a profile targeting it."""

    model: str
    int8_class: str  # "AVX2 without VNNI" | "VNNI" | "AMX" | …
    source: str  # /proc/cpuinfo or MODELPORT_CPU_FLAGS
    bf16_units: bool  # avx512_bf16 or amx_bf16: OpenVINO runs un-pinned float layers at bf16
    ort_int8: str  # ONNX Runtime INT8 defaults for a profile that targets this CPU
    openvino_int8: str  # NNCF's overflow fix default
    bf16: str = ""  # the bf16 line: which profiles offer bf16 here and on which units, or why not


def cpu_fact() -> CpuFact:
    """This machine's CPU (``MODELPORT_CPU_FLAGS`` honoured, as every decision does) and its INT8 defaults."""
    from modelport.core.cpu import cpu_info

    cpu = cpu_info()
    if cpu.vnni:
        ort = "QDQ with 8-bit weights (VNNI/AMX accumulate in 32 bits: no u8s8 saturation)"
        ov = "overflow_fix first_layer_only"
    else:
        ort = "QOperator with reduce_range (7-bit weights: u8s8 kernels without VNNI saturate on 8-bit ones)"
        ov = "overflow_fix enable (7-bit weights)"
    from modelport.backends.bf16 import bf16_problem, bf16_units, bf16_units_text

    return CpuFact(model=cpu.model or "unknown CPU", int8_class=cpu.int8_class, source=cpu.source,
                   bf16_units=bf16_units(cpu), ort_int8=ort, openvino_int8=ov,
                   bf16=bf16_line(bf16_units_text(cpu), bf16_problem(cpu)))


def bf16_line(units: str, problem: str | None) -> str:
    """What ``doctor`` says about bf16: the profiles that offer it and the units it runs on, or why it is refused."""
    from modelport.core.profiles import load_profiles
    from modelport.core.types import Precision

    offering = [p.name for p in load_profiles().values() if Precision.BF16 in p.precisions]
    names = ", ".join(offering) or "no profile"
    if problem is None:
        return (f"bf16: offered on {names} (BF16 units: {units}); ONNX Runtime and ExecuTorch XNNPACK have no bf16 "
                "CPU kernels and refuse it")
    return f"bf16: unavailable on {names}: {problem}"


@dataclass(frozen=True)
class MachineReport:
    runtimes: tuple[RuntimeFact, ...]
    profiles: tuple[ProfileFact, ...]
    cpu: CpuFact | None = None

    def runnable_profiles(self) -> list[str]:
        return [p.name for p in self.profiles if p.runnable]


def machine_report() -> MachineReport:
    """Every backend of the table asked once (availability never raises), then every profile against it."""
    from modelport.backends import BACKENDS, get_runtime
    from modelport.core.profiles import load_profiles

    runtimes = {}
    facts = []
    for name, row in BACKENDS.items():
        rt = get_runtime(name)
        runtimes[name] = rt
        ok, why = rt.availability()
        facts.append(RuntimeFact(name, row.label, ok, why, tuple(rt.devices()) if ok else ()))
    profiles = []
    for prof in load_profiles().values():
        ok, why = runtimes[prof.runtime].device_available(prof.device)
        profiles.append(
            ProfileFact(prof.name, prof.runtime, prof.device, tuple(str(p) for p in prof.precisions), ok, "" if ok else why)
        )
    return MachineReport(tuple(facts), tuple(profiles), cpu_fact())
