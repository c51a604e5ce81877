"""The machine a benchmark ran on: a speed figure is only a fact about that machine.

Everything here is best effort and never raises: a missing tool or file becomes ``None``. Package versions come
from ``importlib.metadata`` so recording them does not import the heavy packages themselves.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from modelport.core.cpu import RECORDED_FLAGS as CPU_FLAGS


def _packages() -> dict[str, tuple[str, ...]]:
    """Distributions to record: the backend table's (``modelport.backends``), not a list of our own."""
    from modelport.backends import package_versions

    return package_versions()


def _version(dists: tuple[str, ...]) -> str | None:
    from modelport.core.versions import installed_version

    return installed_version(*dists)


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The hardware's model and flags (core.cpu reads them; a MODELPORT_CPU_FLAGS override is recorded beside)."""
    from modelport.core.cpu import CPU_FLAGS_ENV, cpu_info

    hw = cpu_info(path, override=False)
    info: dict[str, Any] = {
        "model": hw.model or None,
        "flags": {f: (f in hw.flags) if hw.known else None for f in CPU_FLAGS},
        "int8_class": hw.int8_class,
    }
    decided = cpu_info(path)
    if decided.source == CPU_FLAGS_ENV:
        info["decisions_use"] = {"flags_override": sorted(decided.flags), "int8_class": decided.int8_class}
    return info


def _memory_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**20, 1)
    except Exception:  # noqa: BLE001 - environment recording is best effort by contract
        return None


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _gpus() -> list[dict[str, str]] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    text = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if not text:
        return None
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except Exception:  # noqa: BLE001 - missing or broken install is recorded as None
        return None


def _openvino_devices() -> dict[str, str] | None:
    try:
        import openvino as ov

        core = ov.Core()
        out = {}
        for dev in core.available_devices:
            try:
                out[dev] = str(core.get_property(dev, "FULL_DEVICE_NAME"))
            except Exception:  # noqa: BLE001
                out[dev] = dev
        return out
    except Exception:  # noqa: BLE001 - missing or broken install is recorded as None
        return None


def _git_commit(cwd: Path) -> dict[str, Any] | None:
    if shutil.which("git") is None:
        return None
    commit = _run(["git", "rev-parse", "HEAD"], cwd=cwd)
    if not commit:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd)
    return {"commit": commit, "dirty": bool(dirty)}


def _safe(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - collect_environment never raises, by contract
        return None


def collect_environment(threads: int | None = None) -> dict[str, Any]:
    """A JSON-ready record of CPU, memory, OS, package versions, devices, thread settings and git commit."""
    cpu = _safe(_cpuinfo) or {"model": None, "flags": {}}
    return {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": {
            "model": cpu.get("model"),
            "logical_cores": os.cpu_count(),
            "usable_cores": _safe(lambda: len(os.sched_getaffinity(0))),
            "flags": cpu.get("flags"),
            "int8_class": cpu.get("int8_class"),
            **({"decisions_use": cpu["decisions_use"]} if cpu.get("decisions_use") else {}),
            "machine": platform.machine(),
        },
        "memory_total_mb": _safe(_memory_total_mb),
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "packages": {name: _safe(_version, dists) for name, dists in _packages().items()},
        "onnxruntime_providers": _safe(_ort_providers),
        "openvino_devices": _safe(_openvino_devices),
        "gpus": _safe(_gpus),
        "threads": {
            "requested": threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        },
        "git": _safe(_git_commit, Path.cwd()),
    }
