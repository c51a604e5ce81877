"""ONNX → TensorRT engine for the ``t4`` profile (TensorRT 10 Python API).

A TensorRT engine is tied to the GPU model and the TensorRT version that built it, so the artifact that travels is
a *bundle* any machine can write: a copy of the ONNX, the parser preflight, the INT8 calibration inputs and a
ready ``build_engine.sh`` (trtexec). Where TensorRT and a CUDA GPU are present the engine is also built here,
through the Python API, with an entropy (default) or min-max INT8 calibrator fed from the shared ``Feeds``.

Every engine gets a sidecar ``model.engine.json`` (TensorRT version, GPU name, compute capability, flags,
optimisation profiles, ONNX and engine sha256); the runtime refuses an engine whose sidecar does not match.

Calibration caches are named ``calib-<onnx sha256[:12]>-trt<TensorRT version>.cache``: the scales belong to one
graph and one TensorRT release, so a cache is reused only by the same ONNX bytes and the same TensorRT version,
whether modelport's builder or trtexec (``--calib``) reads it. trtexec cannot calibrate from data; the cache comes
from this module (``python -m modelport.backends.tensorrt.convert BUNDLE_DIR`` on the device reads ``calibration.npz``).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.base import Converter
from modelport.backends.tensorrt.preflight import PreflightReport, preflight
from modelport.core.files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import (
    ConversionError,
    InputError,
    ManifestError,
    ModelportError,
    RuntimeUnavailableError,
)

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
ENGINE_NAME = "model.engine"
SIDECAR_NAME = "model.engine.json"
SCRIPT_NAME = "build_engine.sh"
CALIBRATION_NAME = "calibration.npz"
PREFLIGHT_NAME = "preflight.json"
BUNDLE_NAME = "bundle.json"
TIMING_CACHE_NAME = "timing.cache"

_UNAVAILABLE_PREFIX = "TensorRT is not installed (pip install tensorrt, from NVIDIA's index) and/or no CUDA GPU: "
_CALIBRATORS = ("entropy", "minmax")


# ----------------------------------------------------------------------------------------------- environment


def tensorrt_availability() -> tuple[bool, str]:
    """``(True, "TensorRT <v> on <gpu>")`` or ``(False, what is missing)``; never raises. Shared with the runtime."""
    missing: list[str] = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the 'tensorrt' Python package is not installed")
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
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


# ------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BuildSettings:
    """Engine build knobs, read from the profile's options (``profiles.toml``) with these defaults."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 1024
    int8_calibrator: str = "entropy"  # or "minmax"
    int8_fp16_fallback: bool = True  # INT8 engines may run layers INT8 cannot take in FP16 rather than FP32

    @classmethod
    def from_profile(cls, profile: DeviceProfile) -> "BuildSettings":
        opts = profile.options
        d = cls()
        if profile.static_batch is not None:
            b = _positive_int(profile, "static_batch", profile.static_batch)
            batches = (b, b, b)
        else:
            batches = tuple(
                _positive_int(profile, key, opts.get(key, default))
                for key, default in (("min_batch", d.min_batch), ("opt_batch", d.opt_batch), ("max_batch", d.max_batch))
            )
        if not batches[0] <= batches[1] <= batches[2]:
            raise InputError(
                f"Profile '{profile.name}' has min_batch={batches[0]}, opt_batch={batches[1]}, max_batch={batches[2]}; "
                "TensorRT needs min ≤ opt ≤ max.",
                fix=f"fix the [{profile.name}] table in profiles.toml.",
            )
        calibrator = opts.get("int8_calibrator", d.int8_calibrator)
        if calibrator not in _CALIBRATORS:
            raise InputError(
                f"Profile '{profile.name}' asks for int8_calibrator={calibrator!r}; "
                f"available: {', '.join(_CALIBRATORS)}.",
                fix=f"set int8_calibrator to one of {', '.join(_CALIBRATORS)} in the [{profile.name}] table.",
            )
        fallback = opts.get("int8_fp16_fallback", d.int8_fp16_fallback)
        if not isinstance(fallback, bool):
            raise InputError(
                f"Profile '{profile.name}' option int8_fp16_fallback={fallback!r} is not a boolean.",
                fix="write true or false.",
            )
        return cls(
            min_batch=batches[0],
            opt_batch=batches[1],
            max_batch=batches[2],
            workspace_mib=_positive_int(profile, "workspace_mib", opts.get("workspace_mib", d.workspace_mib)),
            int8_calibrator=str(calibrator),
            int8_fp16_fallback=fallback,
        )

    def flags(self, precision: Precision) -> list[str]:
        """Builder flags by name. FP32 turns TF32 off: an 'fp32' engine must compute in FP32 on Ampere and later."""
        if precision is Precision.FP32:
            return ["noTF32"]
        if precision is Precision.FP16:
            return ["fp16"]
        return ["int8", "fp16"] if self.int8_fp16_fallback else ["int8"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(profile: DeviceProfile, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"Profile '{profile.name}' option {key}={value!r} is not a positive integer.",
            fix=f"fix the [{profile.name}] table in profiles.toml.",
        )
    return value


def _is_dynamic(d: Any) -> bool:
    return not isinstance(d, int) or d < 0


def batch_shapes(
    inputs: Sequence[tuple[str, Sequence[Any]]], settings: BuildSettings
) -> dict[str, dict[str, list[int]]]:
    """Optimisation-profile shapes ``{name: {min, opt, max}}`` for every input with a dynamic batch axis.

    A dynamic dimension is a name (``"batch"``) or a negative int (TensorRT's ``-1``). Only axis 0 may be dynamic;
    static inputs need no profile and are left out.
    """
    out: dict[str, dict[str, list[int]]] = {}
    for name, shape in inputs:
        dims = list(shape)
        for axis, d in enumerate(dims[1:], start=1):
            if _is_dynamic(d):
                raise ConversionError(
                    f"Input '{name}' has a dynamic dimension {d!r} at axis {axis} (shape {tuple(dims)}); the TensorRT "
                    "profile only sizes the batch axis.",
                    fix="export the ONNX with static sizes except the batch axis.",
                )
        if dims and _is_dynamic(dims[0]):
            rest = [int(d) for d in dims[1:]]
            out[name] = {
                "min": [settings.min_batch, *rest],
                "opt": [settings.opt_batch, *rest],
                "max": [settings.max_batch, *rest],
            }
    return out


# ------------------------------------------------------------------------------------------------ trtexec


def _trtexec_name(name: str) -> str:
    """trtexec splits shape specs on ':' and ','; names containing them are wrapped in single quotes."""
    return f"'{name}'" if any(c in name for c in ":,' ") else name


def _shape_spec(shapes: dict[str, dict[str, list[int]]], which: str) -> str:
    return ",".join(f"{_trtexec_name(n)}:{'x'.join(str(d) for d in s[which])}" for n, s in shapes.items())


CALIB_PLACEHOLDER = "--calib=<calibration cache>"


def trtexec_args(precision: Precision, settings: BuildSettings, shapes: dict[str, dict[str, list[int]]]) -> list[str]:
    """trtexec arguments (without the program) that build the same engine as the Python builder.

    For INT8 the last argument is ``CALIB_PLACEHOLDER``; the script fills it with the cache it finds.
    """
    args = [f"--onnx={ONNX_NAME}", f"--saveEngine={ENGINE_NAME}"]
    args += [f"--{flag}" for flag in settings.flags(precision)]
    if shapes:
        args += [f"--{w}Shapes={_shape_spec(shapes, w)}" for w in ("min", "opt", "max")]
    args += [
        f"--memPoolSize=workspace:{settings.workspace_mib}M",
        f"--timingCacheFile={TIMING_CACHE_NAME}",
        "--skipInference",
    ]
    if precision is Precision.INT8:
        args.append(CALIB_PLACEHOLDER)
    return args


# ------------------------------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class Bundle:
    """What ``bundle.json`` records: enough to build the engine on the device without the source artifact."""

    directory: Path
    profile: str
    precision: Precision
    settings: BuildSettings
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx_files: dict[str, str]  # file name → sha256 (model.onnx first, external data after)
    onnx_sha256: str
    shapes: dict[str, dict[str, list[int]]]
    calibration_samples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "modelport.tensorrt-bundle",
            "schema_version": 1,
            "created": _now(),
            "profile": self.profile,
            "precision": str(self.precision),
            "settings": self.settings.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "onnx_files": self.onnx_files,
            "onnx_sha256": self.onnx_sha256,
            "optimization_profiles": [self.shapes] if self.shapes else [],
            "calibration": {"file": CALIBRATION_NAME, "samples": self.calibration_samples}
            if self.precision is Precision.INT8
            else None,
            "trtexec": ["trtexec", *trtexec_args(self.precision, self.settings, self.shapes)],
        }

    @classmethod
    def read(cls, directory: Path) -> "Bundle":
        directory = Path(directory)
        path = directory / BUNDLE_NAME
        if not path.is_file():
            raise ManifestError(
                f"No {BUNDLE_NAME} in {directory}.", fix="pass a folder written by the tensorrt converter."
            )
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("schema") != "modelport.tensorrt-bundle" or d.get("schema_version") != 1:
                raise ManifestError(
                    f"{path} is not a version-1 modelport TensorRT bundle.", fix="write the bundle again."
                )
            profiles = d.get("optimization_profiles") or [{}]
            calib = d.get("calibration") or {}
            return cls(
                directory=directory,
                profile=str(d["profile"]),
                precision=Precision(d["precision"]),
                settings=BuildSettings(**d["settings"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                onnx_files={str(k): str(v) for k, v in d["onnx_files"].items()},
                onnx_sha256=str(d["onnx_sha256"]),
                shapes={
                    str(k): {w: [int(x) for x in v[w]] for w in ("min", "opt", "max")} for k, v in profiles[0].items()
                },
                calibration_samples=int(calib.get("samples", 0)),
            )
        except ManifestError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(
                f"Malformed {path}: {type(exc).__name__}: {exc}.", fix="write the bundle again."
            ) from exc


def write_trt_bundle(
    artifact: Artifact, profile: DeviceProfile, precision: Precision, calibration: Feeds | None, out_dir: Path
) -> Path:
    """Write the device bundle (no GPU needed) into ``out_dir`` and return ``out_dir``.

    Files: model.onnx (+ external data), preflight.json, bundle.json, build_engine.sh and, for INT8,
    calibration.npz.
    """
    _write_bundle(artifact, profile, precision, calibration, Path(out_dir))
    return Path(out_dir)


def _write_bundle(
    artifact: Artifact, profile: DeviceProfile, precision: Precision, calibration: Feeds | None, out_dir: Path
) -> tuple[Bundle, PreflightReport]:
    if artifact.format is not Format.ONNX:
        raise InputError(
            f"The TensorRT converter takes an ONNX artifact, got '{artifact.format}' ({artifact.path}).",
            fix="export the model to ONNX first.",
        )
    if not Path(artifact.path).is_file():
        raise InputError(f"No ONNX file at {artifact.path}.", fix="export the model to ONNX first.")
    profile.check_precision(precision)
    settings = BuildSettings.from_profile(profile)
    if precision is Precision.INT8 and calibration is None:
        raise InputError(
            f"An INT8 TensorRT engine for '{profile.name}' needs calibration data, and none was given.",
            fix="pass calibration data (a dataset or --calibration) or choose fp16/fp32.",
        )
    shapes = batch_shapes([(t.name, t.shape) for t in artifact.inputs], settings)
    out_dir.mkdir(parents=True, exist_ok=True)

    onnx_files = _copy_onnx(artifact, out_dir)
    onnx_sha = next(iter(onnx_files.values())) if len(onnx_files) == 1 else _digest(list(onnx_files.values()))
    report = preflight(out_dir / ONNX_NAME)
    atomic_write_json(out_dir / PREFLIGHT_NAME, report.to_dict())

    samples = 0
    if precision is Precision.INT8 and calibration is not None:
        arrays = calibration_arrays(calibration, artifact.inputs)
        samples = len(next(iter(arrays.values())))
        save_calibration(out_dir / CALIBRATION_NAME, arrays)

    bundle = Bundle(
        directory=out_dir,
        profile=profile.name,
        precision=precision,
        settings=settings,
        inputs=artifact.inputs,
        outputs=artifact.outputs,
        onnx_files=onnx_files,
        onnx_sha256=onnx_sha,
        shapes=shapes,
        calibration_samples=samples,
    )
    atomic_write_json(out_dir / BUNDLE_NAME, bundle.to_dict())
    script = out_dir / SCRIPT_NAME
    atomic_write_text(script, build_script(bundle))
    os.chmod(script, 0o755)
    return bundle, report


def _digest(hexes: list[str]) -> str:
    h = hashlib.sha256()
    for x in hexes:
        h.update(x.encode())
    return h.hexdigest()


def _copy_onnx(artifact: Artifact, out_dir: Path) -> dict[str, str]:
    """Copy the ONNX as model.onnx, and external-data files under their own names (the graph refers to them)."""
    src = Path(artifact.path)
    extras = [f for f in artifact.files if f not in (src.name, ONNX_NAME)]
    pairs = [(src, out_dir / ONNX_NAME)] + [(src.parent / f, out_dir / f) for f in extras]
    shas: dict[str, str] = {}
    for s, t in pairs:
        if not s.is_file():
            raise InputError(
                f"The ONNX artifact lists {s.name}, which is missing at {s}.", fix="export the model again."
            )
        if not (t.exists() and s.resolve() == t.resolve()):
            with atomic_path(t) as tmp:
                shutil.copyfile(s, tmp)
        shas[t.relative_to(out_dir).as_posix()] = sha256_file(t)
    return shas


def calibration_arrays(calibration: Feeds, inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Every calibration batch checked against the model inputs, then joined into one array per input."""
    from modelport.backends.base import validate_feed

    names = [t.name for t in inputs]
    if len(calibration) == 0:
        raise InputError("The calibration data is empty.", fix="give at least one batch of calibration inputs.")
    feeds = calibration if all(set(b) == set(names) for b in calibration) else calibration.renamed(names)
    free_batch = [t.with_batch("batch") for t in inputs]  # batches are re-cut to the engine's calibration batch
    for batch in feeds:
        validate_feed(free_batch, batch)
    return {n: np.ascontiguousarray(np.concatenate([b[n] for b in feeds])) for n in names}


def save_calibration(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``calibration.npz``: arrays ``x0, x1, …`` and their input names in ``names`` (no pickles)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, names=np.array(list(arrays)), **{f"x{i}": a for i, a in enumerate(arrays.values())})


def load_calibration(path: Path) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise InputError(f"No calibration inputs at {path}.", fix="write the bundle again with calibration data.")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            return {n: z[f"x{i}"] for i, n in enumerate(names)}
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not a modelport calibration file: {exc}.", fix="write the bundle again.") from exc


# ------------------------------------------------------------------------------------------- build script

_SCRIPT = r"""#!/usr/bin/env bash
# Builds model.engine from model.onnx with trtexec on the device that will run it (NVIDIA GPU + TensorRT 10),
# then writes model.engine.json, the sidecar without which modelport refuses to load the engine.
# Written by modelport for profile '@PROFILE@', precision @PRECISION@. model.onnx sha256: @SHA@
#
# Engines are tied to the GPU model and the TensorRT version that built them: build where they run.
# Environment: TRTEXEC (path of trtexec, default: trtexec on PATH); TRT_VERSION, GPU_NAME, COMPUTE_CAPABILITY
# (recorded in the sidecar; detected with the tensorrt Python package, torch or nvidia-smi when unset);
# CALIB_CACHE (INT8 only: the calibration cache to read).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${TRTEXEC:-trtexec}"
if ! command -v "$TRTEXEC" >/dev/null 2>&1; then
  echo "trtexec not found; set TRTEXEC=/path/to/trtexec (it ships in TensorRT's bin/ folder)." >&2
  exit 127
fi
export TRT_VERSION="${TRT_VERSION:-$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)}"
if [ -z "$TRT_VERSION" ]; then
  echo "Cannot tell the TensorRT version (no 'tensorrt' Python package); set TRT_VERSION=10.x.y." >&2
  exit 2
fi
python3 - <<'PY'
import hashlib, sys
for name, want in @ONNX_FILES@.items():
    h = hashlib.sha256()
    with open(name, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != want:
        sys.exit(f"{name} does not match the bundle (sha256 {h.hexdigest()}, expected {want}); copy the bundle again.")
PY
@CALIB@rm -f model.engine.json
"$TRTEXEC" \
@ARGS@
python3 - <<'PY'
import datetime, hashlib, json, os, subprocess, sys

meta = json.loads(@META@)

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def gpu():
    name, cc = os.environ.get("GPU_NAME", ""), os.environ.get("COMPUTE_CAPABILITY", "")
    if name and cc:
        return name, cc
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return name or torch.cuda.get_device_name(0), cc or f"{major}.{minor}"
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"Cannot tell the GPU name ({exc}); set GPU_NAME and COMPUTE_CAPABILITY.")
    n, c = (s.strip() for s in out.strip().splitlines()[0].rsplit(",", 1))
    return name or n, cc or c

gpu_name, cc = gpu()
meta.update(
    tensorrt_version=os.environ["TRT_VERSION"], gpu_name=gpu_name, compute_capability=cc,
    engine_sha256=sha256("model.engine"), builder="trtexec",
    calibration_cache=os.environ.get("CALIB_CACHE") or None,
    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
)
with open("model.engine.json.tmp", "w") as fh:
    json.dump(meta, fh, indent=2)
    fh.write("\n")
os.replace("model.engine.json.tmp", "model.engine.json")
print(f"built model.engine for {gpu_name} (compute {cc}), TensorRT {meta['tensorrt_version']}")
PY
"""

_CALIB_BLOCK = r"""# INT8: trtexec reads a calibration cache but cannot calibrate from data. Caches are keyed by
# the ONNX sha256 and the TensorRT version; modelport's builder writes them
# ('python -m modelport.backends.tensorrt.convert .' reads calibration.npz and builds the engine itself).
export CALIB_CACHE="${CALIB_CACHE:-@CACHE_PREFIX@${TRT_VERSION}.cache}"
if [ ! -s "$CALIB_CACHE" ]; then
  echo "No INT8 calibration cache '$CALIB_CACHE' for this model and TensorRT $TRT_VERSION. Without one trtexec" \
       "uses placeholder scales and the engine's accuracy is meaningless." \
       "Run 'python -m modelport.backends.tensorrt.convert .' here instead (it calibrates from" \
       "calibration.npz), or set CALIB_CACHE." >&2
  exit 2
fi
"""


def build_script(bundle: Bundle) -> str:
    """The text of ``build_engine.sh`` for ``bundle``."""
    rendered = []
    for arg in trtexec_args(bundle.precision, bundle.settings, bundle.shapes):
        rendered.append('--calib="$CALIB_CACHE"' if arg == CALIB_PLACEHOLDER else shlex.quote(arg))
    args = " \\\n".join(f"  {a}" for a in rendered)
    meta = {
        "precision": str(bundle.precision),
        "build_flags": bundle.settings.flags(bundle.precision),
        "optimization_profiles": [bundle.shapes] if bundle.shapes else [],
        "onnx_sha256": bundle.onnx_sha256,
        "profile": bundle.profile,
        "trtexec": ["trtexec", *(a for a in trtexec_args(bundle.precision, bundle.settings, bundle.shapes))],
    }
    calib = ""
    if bundle.precision is Precision.INT8:
        calib = _CALIB_BLOCK.replace("@CACHE_PREFIX@", f"calib-{bundle.onnx_sha256[:12]}-trt")
    return (
        _SCRIPT.replace("@PROFILE@", bundle.profile)
        .replace("@PRECISION@", str(bundle.precision))
        .replace("@SHA@", bundle.onnx_sha256)
        .replace("@ONNX_FILES@", repr(dict(bundle.onnx_files)))
        .replace("@CALIB@", calib)
        .replace("@ARGS@", args)
        .replace("@META@", json.dumps(json.dumps(meta)))
    )


# ---------------------------------------------------------------------------------------- calibration feed


class DeviceBatches:
    """Calibration batches of a fixed size, copied pinned-host → device into reused torch CUDA buffers.

    ``next_pointers(names)`` fills the buffers with the next batch and returns their device addresses in the
    order TensorRT asks for them; ``None`` when the data is used up. Samples beyond the last full batch are
    dropped (calibration profiles have one shape).
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch: int, device: str = "cuda:0") -> None:
        import torch

        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise InputError(
                f"Calibration inputs have different sample counts {sorted(sizes)}.", fix="give as many for each input."
            )
        self.samples = sizes.pop()
        if batch < 1 or self.samples < batch:
            raise InputError(
                f"INT8 calibration needs batches of {batch} samples, but only {self.samples} were given.",
                fix=f"give at least {batch} calibration samples.",
            )
        self.batch = batch
        self.num_batches = self.samples // batch
        self.served = 0
        self._arrays = arrays
        self._device = torch.device(device)
        self._host = {
            n: torch.empty((batch, *a.shape[1:]), dtype=torch_dtype(a.dtype)).pin_memory() for n, a in arrays.items()
        }
        self._dev = {n: torch.empty_like(h, device=self._device) for n, h in self._host.items()}

    def next_pointers(self, names: Sequence[str]) -> list[int] | None:
        import torch

        if self.served >= self.num_batches:
            return None
        missing = [n for n in names if n not in self._arrays]
        if missing:
            raise ConversionError(
                f"TensorRT asks for calibration input(s) {missing}; the calibration data has {list(self._arrays)}.",
                fix="give calibration data under the model's input names.",
            )
        lo = self.served * self.batch
        stream = torch.cuda.current_stream(self._device)
        for n in names:
            self._host[n].numpy()[...] = self._arrays[n][lo : lo + self.batch]
            self._dev[n].copy_(self._host[n], non_blocking=True)
        stream.synchronize()  # TensorRT reads the buffers on its own stream
        self.served += 1
        return [int(self._dev[n].data_ptr()) for n in names]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._host[name].shape)


def torch_dtype(dtype: Any) -> Any:
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _make_calibrator(trt: Any, algorithm: str, batches: DeviceBatches, cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` (default) or ``IInt8MinMaxCalibrator`` over ``batches``, cached at ``cache``.

    Errors raised inside TensorRT's callbacks would be lost in C++; they are kept in ``error`` and re-raised
    after the build.
    """
    base = trt.IInt8MinMaxCalibrator if algorithm == "minmax" else trt.IInt8EntropyCalibrator2

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # pybind trampolines must be initialised explicitly
            self.error: BaseException | None = None
            self.cache_reused = False

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks take the batch from the calibration profile's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                return batches.next_pointers(names)
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised after the build
                self.error = exc
                return None

        def read_calibration_cache(self) -> bytes | None:
            if cache.is_file() and cache.stat().st_size > 0:
                self.cache_reused = True
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            try:
                atomic_write_bytes(cache, bytes(memoryview(data)))
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised after the build
                self.error = exc

    return _Calibrator()


# --------------------------------------------------------------------------------------------- the builder


def make_trt_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to ``logging`` and keeps errors for the exception message."""

    class _Logger(trt.ILogger):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def build_engine(bundle: Bundle) -> dict[str, Any]:
    """Build ``model.engine`` from the bundle with the TensorRT Python API; write it and its sidecar atomically.

    Returns the sidecar. Needs TensorRT ≥ 10 and a CUDA GPU (device 0).
    """
    import tensorrt as trt

    d = bundle.directory
    env = current_environment(0)
    logger = make_trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(d / ONNX_NAME)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConversionError(
            f"TensorRT {env['tensorrt_version']} could not parse {d / ONNX_NAME}: {'; '.join(errors) or 'no detail'}. "
            f"Preflight: see {d / PREFLIGHT_NAME}.",
            fix="replace the unsupported operators (or export with another opset) and convert again.",
        )
    net_inputs = [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]
    shapes = batch_shapes(net_inputs, bundle.settings)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bundle.settings.workspace_mib << 20)
    flags = bundle.settings.flags(bundle.precision)
    for flag in flags:
        if flag == "noTF32":
            config.clear_flag(trt.BuilderFlag.TF32)
        else:
            config.set_flag(getattr(trt.BuilderFlag, flag.upper()))
    if shapes:
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            profile.set_shape(name, s["min"], s["opt"], s["max"])
        if config.add_optimization_profile(profile) < 0:
            raise ConversionError(
                f"TensorRT rejected the optimisation profile {shapes}.", fix="check the profile's batch options."
            )

    timing_path = d / TIMING_CACHE_NAME
    _use_timing_cache(config, timing_path)

    calibrator, calib_info = None, None
    if bundle.precision is Precision.INT8:
        calibrator, calib_info = _setup_calibration(trt, builder, config, bundle, shapes, net_inputs, env)

    start = time.perf_counter_ns()
    serialized = builder.build_serialized_network(network, config)
    build_s = (time.perf_counter_ns() - start) / 1e9
    if calibrator is not None and calibrator.error is not None:
        raise ConversionError(
            f"INT8 calibration failed: {calibrator.error}", fix="check the calibration data."
        ) from calibrator.error
    if serialized is None:
        raise ConversionError(
            f"TensorRT {env['tensorrt_version']} failed to build the {bundle.precision} engine: "
            f"{'; '.join(logger.errors[-5:]) or 'no error was logged'}.",
            fix="read the TensorRT errors above; more workspace (workspace_mib) or fp32 may help.",
        )
    engine_bytes = bytes(memoryview(serialized))
    atomic_write_bytes(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
    if calibrator is not None and calib_info is not None:
        calib_info["cache_reused"] = bool(calibrator.cache_reused)

    engine_path = d / ENGINE_NAME
    side = sidecar_path(engine_path)
    side.unlink(missing_ok=True)  # never leave an old sidecar beside a new engine
    atomic_write_bytes(engine_path, engine_bytes)
    sidecar = {
        **env,
        "precision": str(bundle.precision),
        "build_flags": flags,
        "optimization_profiles": [shapes] if shapes else [],
        "onnx_sha256": bundle.onnx_sha256,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "workspace_mib": bundle.settings.workspace_mib,
        "calibration": calib_info,
        "builder": "modelport",
        "build_seconds": round(build_s, 3),
        "created": _now(),
    }
    atomic_write_json(side, sidecar)
    return sidecar


def _use_timing_cache(config: Any, path: Path) -> None:
    """Reuse tactic timings from earlier builds on this GPU/TensorRT; a mismatched or corrupt cache is replaced."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("Timing cache %s does not fit this GPU/TensorRT; starting an empty one.", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _setup_calibration(
    trt: Any,
    builder: Any,
    config: Any,
    bundle: Bundle,
    shapes: dict[str, dict[str, list[int]]],
    net_inputs: list[tuple[str, tuple[int, ...]]],
    env: dict[str, str],
) -> tuple[Any, dict[str, Any]]:
    arrays = load_calibration(bundle.directory / CALIBRATION_NAME)
    samples = len(next(iter(arrays.values())))
    static = [s[0] for _, s in net_inputs if s and not _is_dynamic(s[0])]
    batch = int(static[0]) if static and not shapes else max(1, min(bundle.settings.opt_batch, samples))
    batches = DeviceBatches(arrays, batch)
    cache = bundle.directory / calibration_cache_name(bundle.onnx_sha256, env["tensorrt_version"])
    calibrator = _make_calibrator(trt, bundle.settings.int8_calibrator, batches, cache)
    config.int8_calibrator = calibrator
    if shapes:  # dynamic inputs: calibration runs at one shape, given by its own profile
        cprofile = builder.create_optimization_profile()
        for name in shapes:
            shape = batches.shape(name)
            cprofile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(cprofile)
    info = {
        "algorithm": bundle.settings.int8_calibrator,
        "cache": cache.name,
        "batch": batch,
        "batches": batches.num_batches,
        "samples_used": batches.num_batches * batch,
        "samples_given": samples,
    }
    return calibrator, info


# ------------------------------------------------------------------------------------------- the converter


class TensorRtConverter(Converter):
    """ONNX → TensorRT engine. Always writes the device bundle; builds the engine where TensorRT and a GPU exist."""

    name = "tensorrt"
    source = Format.ONNX
    target = Format.TENSORRT_ENGINE

    def availability(self) -> tuple[bool, str]:
        return tensorrt_availability()

    def convert(
        self,
        artifact: Artifact,
        profile: DeviceProfile,
        precision: Precision,
        *,
        calibration: Feeds | None,
        out_dir: Path,
        options: Mapping[str, Any] | None = None,
    ) -> Artifact:
        lowering = _lowering_plan(options, precision)
        out_dir = Path(out_dir)
        bundle, report = _write_bundle(artifact, profile, precision, calibration, out_dir)
        if not report.ok:
            raise ConversionError(
                f"TensorRT's ONNX parser (operator list of TensorRT {report.tensorrt_version}) cannot take this "
                f"model: {report.summary()}. The bundle was written to {out_dir}; see {PREFLIGHT_NAME}.",
                fix="replace the unsupported operators in the model (or export with a supported opset).",
            )
        ok, why = self.availability()
        if not ok:
            written = ", ".join(
                [ONNX_NAME, SCRIPT_NAME, PREFLIGHT_NAME, BUNDLE_NAME]
                + ([CALIBRATION_NAME] if precision is Precision.INT8 else [])
            )
            raise RuntimeUnavailableError(
                f"The {precision} TensorRT engine for '{profile.name}' cannot be built on this machine: {why} "
                f"The device bundle was written to {out_dir} ({written}).",
                fix=f"copy {out_dir} to the device (NVIDIA GPU with TensorRT 10) and run 'bash {SCRIPT_NAME}' there"
                + (" or, for INT8 calibrated from calibration.npz, 'python -m modelport.backends.tensorrt.convert <folder>'"
                   if precision is Precision.INT8 else "")
                + ".",
            )
        sidecar = build_engine(bundle)
        art = engine_artifact(bundle, sidecar, artifact)
        record = lowering.record()
        return art.replace(details={**art.details, "lowering": record}) if record else art


def _lowering_plan(options: Mapping[str, Any] | None, precision: Precision) -> Any:
    """TensorRT calibrates INT8 itself: NNCF/ONNX Runtime settings are noted as not applicable; what it cannot
    honour at all (accuracy-controlled or dynamic quantization) is refused before anything is written."""
    from modelport.backends.lowering import plan_lowering

    plan = plan_lowering(options, precision, "tensorrt", frozenset())
    opts = options or {}
    applies = opts.get("precision") in (None, str(precision))
    given = dict(opts.get("quantization") or {}) if applies else {}
    if "max_drop" in given:
        raise ConversionError(
            "Accuracy-controlled quantization (quantize-accuracy) is not available for TensorRT engines.",
            fix="use an OpenVINO profile for quantize-accuracy, or the plain 'quantize' step for TensorRT.",
        )
    if given.get("mode") == "dynamic":
        raise ConversionError(
            "Dynamic INT8 quantization is not available for TensorRT engines (TensorRT INT8 is calibrated, static).",
            fix="use mode = 'static' (or drop mode) for TensorRT profiles.",
        )
    return plan


def engine_artifact(bundle: Bundle, sidecar: dict[str, Any], source: Artifact | None = None) -> Artifact:
    """The ``Artifact`` record of a built engine."""
    engine = bundle.directory / ENGINE_NAME
    tools = dict(source.tools) if source is not None else {}
    tools["tensorrt"] = str(sidecar["tensorrt_version"])
    return Artifact(
        path=engine,
        format=Format.TENSORRT_ENGINE,
        precision=bundle.precision,
        inputs=bundle.inputs,
        outputs=bundle.outputs,
        profile=bundle.profile,
        sha256=str(sidecar["engine_sha256"]),
        size_bytes=engine.stat().st_size,
        files=(ENGINE_NAME, SIDECAR_NAME, ONNX_NAME),
        parent_sha256=(source.sha256 if source is not None and source.sha256 else bundle.onnx_sha256),
        recipe=source.recipe if source is not None else (),
        preprocessing=source.preprocessing if source is not None else None,
        tools=tools,
        details={
            "gpu_name": sidecar["gpu_name"],
            "compute_capability": sidecar["compute_capability"],
            "build_flags": sidecar["build_flags"],
            "optimization_profiles": sidecar["optimization_profiles"],
            "calibration": sidecar.get("calibration"),
            "build_seconds": sidecar.get("build_seconds"),
            "onnx_sha256": bundle.onnx_sha256,
        },
    )


def build_from_bundle(directory: Path) -> Artifact:
    """On the device: build the engine of a bundle written elsewhere (INT8 calibrates from calibration.npz)."""
    bundle = Bundle.read(Path(directory))
    for name, want in bundle.onnx_files.items():
        got = sha256_file(bundle.directory / name) if (bundle.directory / name).is_file() else "missing"
        if got != want:
            raise InputError(
                f"{bundle.directory / name} does not match the bundle (sha256 {got}, expected {want}).",
                fix="copy the whole bundle folder again.",
            )
    ok, why = tensorrt_availability()
    if not ok:
        raise RuntimeUnavailableError(why, fix="run this on the device: an NVIDIA GPU with TensorRT 10 installed.")
    # The bundle's own settings are used, not today's profile table: they are what the bundle promises.
    return engine_artifact(bundle, build_engine(bundle))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modelport.backends.tensorrt.convert BUNDLE_DIR``: build the engine of a bundle on this machine."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in {"-h", "--help"}:
        print("usage: python -m modelport.backends.tensorrt.convert BUNDLE_DIR", file=sys.stderr)
        return 2
    try:
        art = build_from_bundle(Path(args[0]))
    except ModelportError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    print(f"built {art.path} ({art.size_bytes} bytes, {art.precision}) for {art.details['gpu_name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
