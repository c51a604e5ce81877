"""Whether this CPU computes in bfloat16, and the one sentence every backend says when it does not.

bf16 is only worth offering where the CPU has BF16 units: ``avx512_bf16`` (AVX-512 BF16 dot products, e.g. AMD
EPYC Zen 4/5, Intel Cooper Lake) or ``amx_bf16`` (AMX tiles, Intel Sapphire Rapids and later). Elsewhere OpenVINO
quietly computes in f32 and PyTorch emulates bf16 with conversions, slower than FP32: a "bf16" row there would be
a lie about what ran, so the artifact is ``unavailable`` with the reason instead. The decision reads
``core.cpu.cpu_info()``, so ``MODELPORT_CPU_FLAGS`` (e.g. ``avx2,fma``) exercises the refusal on any machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.errors import RuntimeUnavailableError

if TYPE_CHECKING:
    from modelport.core.cpu import CpuInfo

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
NO_BF16_UNITS = "this CPU has no BF16 units"


# Runtimes that refuse bf16 on CPU, and why (the converters raise these; a profile that does not list bf16 says
# the same instead of "supports fp32, int8 only", so the user reads the reason, not just the refusal).
NO_BF16_KERNELS = {
    "onnxruntime": "ONNX Runtime's CPU provider has no bf16 kernels for convolutions, matmuls or most other "
                   "operators, so a bf16 model would run in FP32 through inserted casts, slower",
    "executorch": "the XNNPACK delegate lowers fp32, fp16 and quantized graphs and has no bf16 CPU kernels, so bf16 "
                  "operators would stay in ExecuTorch's portable kernels, slower than FP32",
}


def no_bf16_kernels(runtime: str) -> str | None:
    """Why ``runtime`` refuses bf16 on CPU, or ``None`` where it is not known to."""
    return NO_BF16_KERNELS.get(runtime)


def _decided(cpu: CpuInfo | None) -> CpuInfo:
    """``cpu``, or this machine's CPU as decisions see it (``MODELPORT_CPU_FLAGS`` honoured)."""
    if cpu is not None:
        return cpu
    from modelport.core.cpu import cpu_info

    return cpu_info()


def bf16_units(cpu: CpuInfo | None = None) -> bool:
    """True when the CPU (as decisions see it: ``MODELPORT_CPU_FLAGS`` honoured) has avx512_bf16 or amx_bf16."""
    cpu = _decided(cpu)
    return bool(cpu.flags & set(BF16_FLAGS))


def bf16_units_text(cpu: CpuInfo | None = None) -> str:
    """Which BF16 units the CPU has (``amx_bf16, avx512_bf16``), or the refusal sentence."""
    cpu = _decided(cpu)
    have = [f for f in BF16_FLAGS if f in cpu.flags]
    return ", ".join(have) if have else NO_BF16_UNITS


def bf16_problem(cpu: CpuInfo | None = None) -> str | None:
    """``None`` when bf16 can run here, else the reason (what an ``unavailable`` row says)."""
    cpu = _decided(cpu)
    if bf16_units(cpu):
        return None
    via = " (flags from MODELPORT_CPU_FLAGS)" if cpu.source == "MODELPORT_CPU_FLAGS" else ""
    return (f"{NO_BF16_UNITS}{via}: bf16 needs avx512_bf16 or amx_bf16 (AMD Zen 4+, Intel Cooper Lake, Sapphire "
            "Rapids and later); without them it would run as f32 or slower than FP32")


def require_bf16(what: str) -> None:
    """Raise ``RuntimeUnavailableError`` (an ``unavailable`` row) when this CPU has no BF16 units."""
    why = bf16_problem()
    if why is not None:
        raise RuntimeUnavailableError(why, fix=f"use fp32 or int8 for {what} on this CPU, or build and run bf16 on "
                                      "a CPU with avx512_bf16 or amx_bf16 ('modelport doctor' says which).")


__all__ = ["BF16_FLAGS", "NO_BF16_KERNELS", "NO_BF16_UNITS", "no_bf16_kernels", "bf16_problem", "bf16_units", "bf16_units_text", "require_bf16"]
