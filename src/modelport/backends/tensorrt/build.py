"""Building an engine from a bundle with TensorRT's Python API, where TensorRT and a CUDA GPU exist: the network,
the optimisation profiles, Polygraphy's INT8 calibrator fed from the bundle's calibration inputs, the timing cache
and the sidecar."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.tensorrt.facts import (
    CALIBRATION_NAME,
    ENGINE_NAME,
    ONNX_NAME,
    PREFLIGHT_NAME,
    TIMING_CACHE_NAME,
    _now,
    calibration_cache_name,
    current_environment,
    sidecar_path,
)
from modelport.backends.tensorrt.plan import Bundle, _is_dynamic, batch_shapes, load_calibration
from modelport.core.files import (
    atomic_write_bytes,
    atomic_write_json,
)
from modelport.core.types import Precision
from modelport.errors import ConversionError, InputError, RuntimeUnavailableError

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------- calibration feed


class CalibrationBatches:
    """Calibration batches of one fixed size, as Polygraphy's calibrator wants them: an iterable of
    ``{input name: numpy array}``. Polygraphy copies each batch to the GPU; this class only slices and checks.

    Samples beyond the last full batch are dropped (a calibration profile has one shape).
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch: int) -> None:
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
        self._arrays = arrays

    def __iter__(self) -> Any:
        for k in range(self.num_batches):
            lo = k * self.batch
            yield {n: np.ascontiguousarray(a[lo : lo + self.batch]) for n, a in self._arrays.items()}

    def __len__(self) -> int:
        return self.num_batches

    def shape(self, name: str) -> tuple[int, ...]:
        return (self.batch, *self._arrays[name].shape[1:])


def torch_dtype(dtype: Any) -> Any:
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _make_calibrator(trt: Any, algorithm: str, batches: CalibrationBatches, cache: Path) -> Any:
    """Polygraphy's calibrator (``polygraphy.backend.trt.Calibrator``: device buffers, the cache file, dtype and
    shape checks) over ``batches``, as an ``IInt8EntropyCalibrator2`` (default) or ``IInt8MinMaxCalibrator``.

    Why Polygraphy: the buffer handling and cache protocol are its job, tested against every TensorRT release;
    ours would be one more copy to keep right. ``cache_reused`` is known before the build (the file exists and is
    not empty), since TensorRT then skips calibration entirely.
    """
    try:
        from polygraphy.backend.trt import Calibrator
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"INT8 engines are calibrated with Polygraphy, which cannot be imported ({exc}).",
            fix="pip install 'modelport[tensorrt]' (it brings polygraphy).",
        ) from exc
    base = trt.IInt8MinMaxCalibrator if algorithm == "minmax" else trt.IInt8EntropyCalibrator2
    calibrator = Calibrator(batches, cache=str(cache), BaseClass=base)
    calibrator.cache_reused = cache.is_file() and cache.stat().st_size > 0
    calibrator.error = None  # Polygraphy raises inside its callbacks' logger; kept for the check after the build
    return calibrator


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
    batches = CalibrationBatches(arrays, batch)
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


