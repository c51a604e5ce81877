"""OpenVINO: runs IR (``.xml`` + ``.bin``) and ONNX artifacts on CPU, GPU or NPU.

Why the explicit precision hint: the CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16 on any CPU with
AVX-512 BF16 or AMX (seen here on an AMD EPYC with avx512_bf16), so an "fp32" artifact would silently run in bf16.
FP32 artifacts are therefore compiled with ``INFERENCE_PRECISION_HINT=f32``; BF16 artifacts with ``bf16`` (CPU
only, and only where the CPU has BF16 units: elsewhere the plugin would quietly compute in f32, so the session is
refused as unavailable); the hint is read back from the compiled model and a BF16 artifact that did not compile to
bf16 is refused too. For other precisions the plugin's choice is kept and recorded in ``session.notes``; an INT8
IR whose non-quantized layers run at bf16 is "int8+bf16" (``compute_precision``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from modelport.backends.base import Feed, Runtime, Session
from modelport.backends.onnxruntime.runtime import _check_format, _check_threads
from modelport.core.types import Artifact, Format, Precision
from modelport.errors import RuntimeUnavailableError

_INSTALL_HINT = "openvino is not installed: pip install openvino"


def _type_name(value: Any) -> str:
    """``<Type: 'float32'>`` → ``f32``; anything else as text."""
    get = getattr(value, "get_type_name", None)
    return str(get()) if callable(get) else str(value)


_PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # OpenVINO's element types in modelport's words


def _precision_note(device: str, inference_precision: str, precision: Precision) -> str:
    """What the plugin's default precision means for this artifact. An INT8 IR runs its quantized layers in INT8;
    the hint only governs the layers left in floating point, and the note must not read as if INT8 were unused."""
    if precision is Precision.INT8:
        label = " (int8+bf16)" if inference_precision == "bf16" else ""
        return (f"OpenVINO {device}{label}: quantized layers run in INT8, the non-quantized layers at "
                f"{inference_precision} (plugin default)")
    return f"OpenVINO {device} runs at {inference_precision} (plugin default)"


class OpenVinoSession(Session):
    """One compiled model and one ``InferRequest``, created on enter."""

    def __init__(self, artifact: Artifact, device: str, threads: int | None, core: Any) -> None:
        super().__init__(artifact, device, threads)
        self._core = core
        self._compiled: Any = None
        self._request: Any = None
        self.config: dict[str, Any] = {}
        self.inference_precision: str | None = None

    def compile_config(self) -> dict[str, Any]:
        """The properties passed to ``compile_model`` (why each: see the module docstring)."""
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        family = self.device.split(".")[0]
        if self.threads is not None:
            if family == "CPU":
                config["INFERENCE_NUM_THREADS"] = int(self.threads)
            else:
                self.notes.append(f"threads={self.threads} ignored: OpenVINO {family} has no thread setting")
        if self.artifact.precision is Precision.FP32 and family in {"CPU", "GPU"}:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if self.artifact.precision is Precision.BF16:
            if family != "CPU":
                raise RuntimeUnavailableError(
                    f"bf16 artifacts run on OpenVINO CPU only, not on {self.device}.",
                    fix="benchmark the bf16 artifact on CPU, or use an fp16 artifact for GPU/NPU.",
                )
            from modelport.backends.bf16 import require_bf16

            require_bf16("intel-cpu")
            config["INFERENCE_PRECISION_HINT"] = "bf16"
        return config

    def _open(self) -> None:
        self.config = self.compile_config()
        model = self._core.read_model(str(self.artifact.path))
        self._compiled = self._core.compile_model(model, self.device, self.config)
        self._request = self._compiled.create_infer_request()
        try:
            self.inference_precision = _type_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        except RuntimeError:  # not every plugin reports it (NPU); nothing to record then
            self.inference_precision = None
        if self.artifact.precision is Precision.BF16 and self.inference_precision != "bf16":
            ran = self.inference_precision or "an unreported precision"
            self._request = self._compiled = None
            raise RuntimeUnavailableError(
                f"OpenVINO {self.device} was asked for INFERENCE_PRECISION_HINT=bf16 and compiled the model at {ran}: "
                "this CPU does not run bf16 in OpenVINO, so a bf16 figure would describe f32.",
                fix="run bf16 on a CPU with avx512_bf16 or amx_bf16, or use the fp32 artifact here.",
            )
        if self.artifact.precision is Precision.BF16:
            self.notes.append(f"OpenVINO {self.device} runs at bf16 (INFERENCE_PRECISION_HINT=bf16, read back)")
        elif self.inference_precision and "INFERENCE_PRECISION_HINT" not in self.config:
            self.notes.append(_precision_note(self.device, self.inference_precision, self.artifact.precision))

    @property
    def compute_precision(self) -> str | None:
        """``int8+bf16``/``int8+fp16`` for an INT8 IR whose float layers ran below f32, ``bf16`` for an FP16 IR the
        plugin ran at bf16 (its default on BF16 CPUs); ``None`` where the artifact's precision is what ran (a bf16
        artifact that compiled to anything else is refused at load)."""
        ran = _PRECISION_NAMES.get(self.inference_precision or "")
        if ran is None:
            return None
        if self.artifact.precision is Precision.INT8:
            return None if ran == "fp32" else f"int8+{ran}"
        return None if ran == str(self.artifact.precision) else ran

    def _infer(self, feed: Feed) -> list[np.ndarray]:
        # share_inputs avoids one copy per call (the call is synchronous); share_outputs=False returns copies,
        # so results stay valid after the next call.
        result = self._request.infer(feed, share_inputs=True, share_outputs=False)
        return list(result.to_tuple())  # already copies (share_outputs=False); no second copy on the hot path

    def _bind(self, feed: Feed) -> Callable[[], list[np.ndarray]]:
        """Bind the feed's arrays to the request once (zero-copy tensors); each call runs and copies the outputs.

        The returned call keeps ``feed`` alive, so the shared input memory stays valid while it is used.
        """
        feed = {name: np.ascontiguousarray(arr) for name, arr in feed.items()}
        _set_inputs(self._request, self._compiled, feed)
        infer = self._request.infer

        def run() -> list[np.ndarray]:
            return list(infer(share_outputs=False).to_tuple())  # copies: results survive the next call

        run.feed = feed  # type: ignore[attr-defined]  # why: the shared tensors point into these arrays
        return run

    def settings(self) -> dict[str, Any]:
        """What the compiled model really uses (threads, streams, hint, pinning), read back from the plugin."""
        return _read_properties(self._compiled)

    def run_throughput(self, feed: Feed, *, seconds: float, warmup_seconds: float,
                       streams: int | None = None) -> dict[str, Any]:
        """Items per second with ``AsyncInferQueue`` on a model compiled with the THROUGHPUT hint.

        A second compile, because streams are fixed at compile time: ``NUM_STREAMS`` from ``streams`` (else the
        plugin's choice), the same ``INFERENCE_NUM_THREADS`` and precision as the latency session, and as many
        requests as the plugin calls optimal. Every request reads the same bound inputs; the clock stops after
        the last request has finished.
        """
        import openvino as ov

        config = {k: v for k, v in self.config.items() if k != "PERFORMANCE_HINT"}
        config["PERFORMANCE_HINT"] = "THROUGHPUT"
        if streams is not None:
            config["NUM_STREAMS"] = int(streams)
        compiled = self._core.compile_model(self._core.read_model(str(self.artifact.path)), self.device, config)
        nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, nireq)
        # no Python completion callback: it needs the GIL on OpenVINO's threads, which slows the queue and was
        # seen to deadlock when the queue was destroyed under pytest
        feed = {name: np.ascontiguousarray(arr) for name, arr in feed.items()}
        for i in range(len(queue)):
            _set_inputs(queue[i], compiled, feed)
        clock = time.perf_counter_ns
        end = clock() + int(warmup_seconds * 1e9)
        while clock() < end:
            queue.start_async()
        queue.wait_all()
        started = 0
        t0 = clock()
        end = t0 + int(seconds * 1e9)
        while clock() < end:
            queue.start_async()  # blocks while every request is busy
            started += 1
        queue.wait_all()
        elapsed = (clock() - t0) / 1e9
        del queue
        settings = _read_properties(compiled)
        settings["infer_requests"] = nireq
        return {
            "completed": started, "seconds": elapsed, "streams": settings.get("NUM_STREAMS"),
            "requests": nireq, "request_latency_ms_p50": None,
            "settings": settings, "engine": "openvino AsyncInferQueue (THROUGHPUT hint)",
        }

    def _close(self) -> None:
        self._request = None
        self._compiled = None


_PROPERTIES = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "ENABLE_CPU_PINNING",
               "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "INFERENCE_PRECISION_HINT",
               "OPTIMAL_NUMBER_OF_INFER_REQUESTS")


def _read_properties(compiled: Any) -> dict[str, Any]:
    """The compiled model's performance properties as JSON-ready values; a plugin lacking one omits it."""
    out: dict[str, Any] = {}
    for key in _PROPERTIES:
        try:
            value = compiled.get_property(key)
        except RuntimeError:
            continue
        out[key] = value if isinstance(value, bool | int | float) else _type_name(value).split(".")[-1]
    return out


def _set_inputs(request: Any, compiled: Any, feed: Feed) -> None:
    """Point the request's input tensors at the feed's arrays (no copy; arrays must stay alive and C-contiguous)."""
    import openvino as ov

    for name, arr in feed.items():
        request.set_tensor(compiled.input(name), ov.Tensor(arr, shared_memory=True))


class OpenVinoRuntime(Runtime):
    name = "openvino"
    formats = frozenset({Format.OPENVINO_IR, Format.ONNX})

    def __init__(self) -> None:
        self._core: Any = None

    @property
    def core(self) -> Any:
        """One ``openvino.Core`` per runtime instance (creating it enumerates devices, which is not free)."""
        if self._core is None:
            import openvino as ov

            self._core = ov.Core()
        return self._core

    def availability(self) -> tuple[bool, str]:
        if importlib.util.find_spec("openvino") is None:
            return False, _INSTALL_HINT
        try:
            return True, importlib.metadata.version("openvino")
        except importlib.metadata.PackageNotFoundError:
            return True, "unknown version"

    def devices(self) -> list[str]:
        if not self.availability()[0]:
            return []
        return list(self.core.available_devices)

    def load(self, artifact: Artifact, device: str = "CPU", threads: int | None = None) -> Session:
        _check_format(self, artifact)
        _check_threads(threads)
        ok, why = self.device_available(device)
        if not ok:
            raise RuntimeUnavailableError(
                why, fix="run on a machine with that device, or pick a profile whose device is listed."
            )
        return OpenVinoSession(artifact, device, threads, self.core)
