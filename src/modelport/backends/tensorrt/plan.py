"""The build plan that travels to the GPU machine: settings from the profile and lowering options, optimisation
profiles, trtexec arguments, the device bundle (ONNX copy, preflight, calibration inputs, ``build_engine.sh``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.tensorrt.facts import (
    _CALIBRATORS,
    BUNDLE_NAME,
    CALIBRATION_NAME,
    ENGINE_NAME,
    ONNX_NAME,
    PREFLIGHT_NAME,
    SCRIPT_NAME,
    TIMING_CACHE_NAME,
    _now,
)
from modelport.backends.tensorrt.preflight import PreflightReport, preflight
from modelport.core.files import (
    atomic_path,
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
)

log = logging.getLogger(__name__)



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


