"""What a TensorRT engine is tied to, and whether TensorRT can run here: availability, this machine's GPU and
TensorRT version, the bundle's file names and the calibration-cache naming rule."""

from __future__ import annotations

import datetime
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)



ONNX_NAME = "model.onnx"
ENGINE_NAME = "model.engine"
SIDECAR_NAME = "model.engine.json"
SCRIPT_NAME = "build_engine.sh"
CALIBRATION_NAME = "calibration.npz"
PREFLIGHT_NAME = "preflight.json"
BUNDLE_NAME = "bundle.json"
TIMING_CACHE_NAME = "timing.cache"

_UNAVAILABLE_PREFIX = "TensorRT cannot run here: "  # followed by each missing piece, said once
_CALIBRATORS = ("entropy", "minmax")


# ----------------------------------------------------------------------------------------------- environment


def tensorrt_availability() -> tuple[bool, str]:
    """``(True, "TensorRT <v> on <gpu>")`` or ``(False, what is missing)``; never raises. Shared with the runtime."""
    missing: list[str] = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("no 'tensorrt' package (pip install tensorrt, from NVIDIA's index)")
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("no CUDA GPU (torch.cuda.is_available() is False)")
    except ImportError:
        missing.append("torch is not installed, so no CUDA device can be allocated")
    if missing:
        return False, _UNAVAILABLE_PREFIX + "; ".join(missing) + "."
    try:
        import tensorrt as trt

        version = str(trt.__version__)
        gpu = torch.cuda.get_device_name(0)
    except Exception as exc:  # ImportError, or OSError when libnvinfer is missing: report, never raise
        return False, _UNAVAILABLE_PREFIX + f"'import tensorrt' failed: {type(exc).__name__}: {exc}."
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < 10:
        return False, (
            f"TensorRT {version} is installed; "
            f"modelport needs TensorRT 10 or newer (pip install -U tensorrt)."
        )
    return True, f"TensorRT {version} on {gpu}"


def current_environment(device_index: int = 0) -> dict[str, str]:
    """The facts an engine is tied to, for this machine: TensorRT version, GPU name, compute capability."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": torch.cuda.get_device_name(device_index),
        "compute_capability": f"{major}.{minor}",
    }


def sidecar_path(engine: Path) -> Path:
    from modelport.backends.sidecar import sidecar_path as _path

    return _path(engine)


def calibration_cache_name(onnx_sha256: str, tensorrt_version: str) -> str:
    """Scales belong to one graph and one TensorRT release: the name says which."""
    return f"calib-{onnx_sha256[:12]}-trt{tensorrt_version}.cache"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


