"""What this machine's CPU can do, read once: the facts INT8 decisions and the environment record depend on.

INT8 arithmetic differs between CPU classes. Without VNNI (AVX2-only desktops, the ``legacy-cpu`` class) ONNX
Runtime's u8×s8 kernels multiply with ``vpmaddubsw``, which adds two 16-bit products and saturates: 8-bit weights
then give wrong results unless they are 7-bit (``reduce_range``); NNCF's ``overflow_fix`` is the same cure on the
OpenVINO side. VNNI (AVX-512 VNNI, AVX-VNNI) and AMX accumulate in 32 bits and need no such fix.

``MODELPORT_CPU_FLAGS`` (comma- or space-separated flag names as in /proc/cpuinfo, e.g. ``avx2,fma``) replaces the
detected flags for every *decision* modelport makes; it cannot change what the hardware computes, and the
environment record says when it is set.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPU_FLAGS_ENV = "MODELPORT_CPU_FLAGS"
CPUINFO = Path("/proc/cpuinfo")
RECORDED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU model name and feature flags, and where the flags came from (``/proc/cpuinfo`` or the override)."""

    model: str
    flags: frozenset[str]
    source: str  # "/proc/cpuinfo" | "MODELPORT_CPU_FLAGS" | "unknown"

    @property
    def vnni(self) -> bool:
        """8-bit dot products accumulated in 32 bits (no u8×s8 saturation)."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        return bool(self.flags & {"amx_tile", "amx_int8", "amx_bf16"})

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def known(self) -> bool:
        return self.source != "unknown"

    @property
    def int8_class(self) -> str:
        """A short name for the INT8 arithmetic this CPU offers (what the record and messages say)."""
        if not self.known:
            return "unknown CPU features"
        if self.amx:
            return "AMX"
        if self.vnni:
            return "VNNI"
        if self.avx2:
            return "AVX2 without VNNI"
        return "no AVX2"

    def record(self) -> dict[str, object]:
        """The JSON-able facts (the flags that matter for speed and INT8 correctness)."""
        return {
            "model": self.model or None,
            "flags": {f: (f in self.flags) if self.known else None for f in RECORDED_FLAGS},
            "int8_class": self.int8_class,
            "flags_source": self.source,
        }


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) from the text of /proc/cpuinfo (x86 ``flags``, ARM ``Features``)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


@lru_cache(maxsize=8)
def _detected(path: Path) -> tuple[str, frozenset[str], bool]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "", frozenset(), False
    model, flags = parse_cpuinfo(text)
    return model or platform.processor() or "", flags, bool(flags)


def cpu_info(path: Path = CPUINFO, *, override: bool = True) -> CpuInfo:
    """This machine's CPU as decisions see it: ``MODELPORT_CPU_FLAGS`` replaces the detected flags (see the module
    docstring) unless ``override=False`` (the hardware's own flags, for the environment record)."""
    model, flags, found = _detected(Path(path))
    forced = os.environ.get(CPU_FLAGS_ENV) if override else None
    if forced is not None and forced.strip():
        return CpuInfo(model, frozenset(forced.replace(",", " ").lower().split()), CPU_FLAGS_ENV)
    return CpuInfo(model, flags, str(path) if found else "unknown")


__all__ = ["CPU_FLAGS_ENV", "RECORDED_FLAGS", "CpuInfo", "cpu_info", "parse_cpuinfo"]
