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

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelport.backends.base import Converter
from modelport.backends.tensorrt.build import build_engine
from modelport.backends.tensorrt.facts import (
    BUNDLE_NAME,
    CALIBRATION_NAME,
    ENGINE_NAME,
    ONNX_NAME,
    PREFLIGHT_NAME,
    SCRIPT_NAME,
    SIDECAR_NAME,
    tensorrt_availability,
)
from modelport.backends.tensorrt.plan import Bundle, _write_bundle
from modelport.core.files import (
    sha256_file,
)
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision
from modelport.data.feeds import Feeds
from modelport.errors import (
    ConversionError,
    InputError,
    ModelportError,
    RuntimeUnavailableError,
)

log = logging.getLogger(__name__)



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
            raise RuntimeUnavailableError(  # the same words for every precision: a table says the reason once
                f"{why} The files to build the engine on the device were written instead.",
                fix=f"copy {out_dir} ({written}) to the device (NVIDIA GPU with TensorRT 10) and run 'bash {SCRIPT_NAME}' there"
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
    if given.get("mode") in ("dynamic", "weight-only"):
        raise ConversionError(
            f"{given['mode'].capitalize()} INT8 quantization is not available for TensorRT engines in modelport "
            "(TensorRT INT8 is calibrated, static).",
            fix="use mode = 'static' (or drop mode) for TensorRT profiles.",
        )
    return plan


def engine_artifact(bundle: Bundle, sidecar: dict[str, Any], source: Artifact | None = None) -> Artifact:
    """The ``Artifact`` record of a built engine (recorded as produced here: this machine may load it later)."""
    from modelport.core.trust import record_produced

    engine = bundle.directory / ENGINE_NAME
    record_produced(engine, Format.TENSORRT_ENGINE)
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
