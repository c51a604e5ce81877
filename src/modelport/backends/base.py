"""The backend interfaces: ``Converter`` (one format to another for a profile) and the runtime-agnostic
``Runtime``/``Session`` protocol.

Like Polygraphy's runners: construction is cheap, resources are taken in ``__enter__`` and released in
``__exit__``; the public ``infer`` validates the feed (names, rank, shape, dtype, finite values) and subclasses
implement only ``_open``/``_infer``/``_close``.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import (
    ConversionError,
    InferenceInputError,
    RuntimeUnavailableError,
)

Feed = dict[str, np.ndarray]
# Artifact details key: the artifact failed its acceptance rule at convert but loads and runs, so ``bench`` times it
# and keeps the failed status (what INT8 would have bought is part of the decision).
MEASURABLE = "measurable"


class Session(ABC):
    """An artifact loaded on a device, ready to run. Use as a context manager.

    Optional hooks are declared here with defaults, so callers call them instead of probing with ``getattr``:
    ``synchronize`` (wait for queued device work; a no-op on CPU), ``settings`` (what the runtime really uses),
    ``notes`` (facts a result should carry) and ``run_throughput`` (the runtime's own concurrency; ``None``: the
    caller measures a synchronous loop). A session whose device work is ``asynchronous`` (GPU) must implement
    ``synchronize``: the class is refused at definition otherwise, so it cannot be timed without one.
    """

    asynchronous: bool = False  # device work outlives ``infer``'s return (GPU streams): timing needs synchronize

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.asynchronous and cls.synchronize is Session.synchronize:
            raise TypeError(
                f"{cls.__name__} runs asynchronous device work but does not implement synchronize(): the timing "
                "loop could stop the clock before the work is done."
            )

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        self.artifact = artifact
        self.device = device
        self.threads = threads
        self.notes: list[str] = []  # facts the benchmark row should carry (e.g. a plugin's default precision)
        self._active = False

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.artifact.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.artifact.outputs

    def __enter__(self) -> "Session":
        self._open()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._active:
            self._active = False
            self._close()

    def infer(self, feed: Feed, *, check_finite: bool = True) -> list[np.ndarray]:
        """Validate the feed against the declared inputs, then run. Returns outputs in declared order."""
        if not self._active:
            raise InferenceInputError("The session is not open.", fix="use it as 'with runtime.load(...) as session:'.")
        validate_feed(self.inputs, feed, check_finite=check_finite)
        return self._infer(feed)

    def bind(self, feed: Feed) -> Callable[[], list[np.ndarray]]:
        """Validate ``feed`` once and return a zero-argument call that runs it and returns the outputs.

        Why: the timing loop must measure the runtime, not our per-call checks and dict building. Runtimes
        override ``_bind`` to set inputs up once (OpenVINO binds tensors to its request); the call still runs the
        inference and retrieves every output, so the clock covers both.
        """
        if not self._active:
            raise InferenceInputError("The session is not open.", fix="use it as 'with runtime.load(...) as session:'.")
        validate_feed(self.inputs, feed)
        return self._bind(feed)

    def _bind(self, feed: Feed) -> Callable[[], list[np.ndarray]]:
        return functools.partial(self._infer, feed)

    def synchronize(self) -> None:
        """Wait until work queued on the device is done; the timing loop calls it before stopping the clock.

        Default: nothing to wait for (CPU runtimes finish inside ``infer``).
        """

    def settings(self) -> dict[str, Any]:
        """What the runtime really uses (threads, streams, precision…), read back where it can; default: nothing."""
        return {}

    @property
    def compute_precision(self) -> str | None:
        """The precision the runtime really computed in, where it differs from what the artifact's precision says
        or was asked for explicitly (``int8+bf16``: INT8 layers, float layers at bf16); ``None`` when the artifact's
        precision is the whole story. Recorded on every benchmark row and shown beside its label."""
        return None

    def run_throughput(
        self, feed: Feed, *, seconds: float, warmup_seconds: float, streams: int | None = None
    ) -> dict[str, Any] | None:
        """Items per second with the runtime's own concurrency (async queue, concurrent sessions): a dict with
        ``completed``, ``seconds``, ``streams``, ``requests``, ``engine``…; ``None`` (the default) when the runtime
        has none, and the caller times a synchronous loop instead."""
        return None

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: Feed) -> list[np.ndarray]: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; default: nothing to release."""


class Runtime(ABC):
    """A native runtime (ONNX Runtime, OpenVINO, TensorRT, …) that can load some artifact formats."""

    name: str = ""
    formats: frozenset[Format] = frozenset()

    @abstractmethod
    def availability(self) -> tuple[bool, str]:
        """``(True, version)`` or ``(False, why not and how to fix)``; never raises."""

    @abstractmethod
    def devices(self) -> list[str]:
        """Device names this runtime sees here (empty when unavailable)."""

    @abstractmethod
    def load(self, artifact: Artifact, device: str = "CPU", threads: int | None = None) -> Session:
        """A session for ``artifact`` (not yet open: enter it)."""

    def device_available(self, device: str) -> tuple[bool, str]:
        ok, why = self.availability()
        if not ok:
            return False, why
        devs = self.devices()
        if any(d == device or d.startswith(device + ".") for d in devs):
            return True, ""
        return False, f"{self.name} sees devices {devs or 'none'} on this machine, not {device}."


def validate_feed(specs: Sequence[TensorSpec], feed: Any, *, check_finite: bool = True) -> None:
    """Raise ``InferenceInputError`` naming what was expected when ``feed`` does not fit ``specs``."""
    if not isinstance(feed, dict):
        raise InferenceInputError(
            f"Inference input must be a dict of input name → numpy array, got {type(feed).__name__}.",
            fix=f"pass {{{', '.join(repr(s.name) for s in specs)}: array}}.",
        )
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in feed]
    extra = [n for n in feed if n not in expected]
    if missing or extra:
        raise InferenceInputError(
            f"Input names do not match: missing {missing or 'none'}, unexpected {extra or 'none'}. "
            f"The model expects {expected}.",
            fix="use the model's input names (see manifest.json 'inputs').",
        )
    for spec in specs:
        arr = feed[spec.name]
        if not isinstance(arr, np.ndarray):
            raise InferenceInputError(
                f"Input '{spec.name}' must be a numpy array, got {type(arr).__name__}.", fix="convert it with np.asarray."
            )
        if str(arr.dtype) != spec.dtype:
            raise InferenceInputError(
                f"Input '{spec.name}' has dtype {arr.dtype}, the model expects {spec.dtype}.",
                fix=f"cast it with arr.astype(np.{spec.dtype}).",
            )
        if arr.ndim != len(spec.shape):
            raise InferenceInputError(
                f"Input '{spec.name}' has rank {arr.ndim} (shape {tuple(arr.shape)}), the model expects rank "
                f"{len(spec.shape)} (shape {tuple(spec.shape)}).",
                fix="reshape the input to the expected rank.",
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if isinstance(want, int) and want >= 0 and got != want:
                raise InferenceInputError(
                    f"Input '{spec.name}' has size {got} on axis {axis} (shape {tuple(arr.shape)}), the model "
                    f"expects {want} (shape {tuple(spec.shape)}).",
                    fix="resize the input to the expected shape; dynamic axes are shown by name.",
                )
        if check_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InferenceInputError(
                f"Input '{spec.name}' contains NaN or Inf values.", fix="clean or re-normalise the input data."
            )

class Converter(ABC):
    """Lower an artifact (usually the validated ONNX export) to a target format at a precision.

    ``convert`` writes only under ``out_dir`` and atomically; it returns the new ``Artifact`` whose
    ``parent_sha256`` is the source's hash. INT8 needs ``calibration``.

    ``options`` are lowering options from compression steps of stage ``lowering`` (PTQ settings such as NNCF
    presets or ONNX Runtime QDQ/QOperator); their keys are defined in ``modelport.backends.lowering``. A converter
    ignores keys meant for another runtime (and records that), and raises ``ConversionError`` for options it
    cannot honour rather than silently producing something else.
    """

    name: str = ""
    source: Format = Format.ONNX
    target: Format = Format.ONNX

    @abstractmethod
    def availability(self) -> tuple[bool, str]:
        """``(True, version)`` or ``(False, reason with fix)``; never raises."""

    @abstractmethod
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
        """Produce the target artifact; raise ``ConversionError`` with the reason on failure."""

    def int8_sensitivity(
        self,
        source: Artifact,
        int8: Artifact,
        profile: DeviceProfile,
        *,
        calibration: Feeds | None,
        probe: Feeds,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Per-layer INT8 error against FP32 for an artifact that failed its acceptance rule: a JSON-able dict with
        ``layers`` (most sensitive first, each named as this converter's ``ignored_scope`` takes it), ``method``
        and ``metric``. Default: ``None``, this converter has no such report."""
        return None

    def require_ready(self, artifact: Artifact, label: str) -> None:
        """Refuse a source of another format (``ConversionError``) and a missing runtime
        (``RuntimeUnavailableError``) before any work."""
        if artifact.format is not self.source:
            raise ConversionError(
                f"The {label} converter takes an {self.source.upper()} model, not {artifact.format}.",
                fix="export the model to ONNX first.",
            )
        ok, why = self.availability()
        if not ok:
            raise RuntimeUnavailableError(why)


def package_availability(module: str, install: str) -> tuple[bool, str]:
    """``(True, version)`` if ``module`` imports, else ``(False, reason with the install fix)``; never raises."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError or a broken native library
        return False, f"{module} cannot be imported ({exc}). Fix: {install}."
    return True, str(getattr(mod, "__version__", "unknown"))


def host_tensors(feed: Feed, order: Sequence[str], max_batch: int | None, what: str) -> list[Any]:
    """Feed arrays as CPU torch tensors in ``order`` (zero-copy where numpy allows), for runtimes that take torch
    tensors (AOTInductor packages, ExecuTorch programs). Both are compiled for batches 1 to ``max_batch``: a larger
    batch is refused here with the fix, not by the runtime with a resize error. ``what`` names the artifact."""
    import torch

    tensors = []
    for name in order:
        arr = feed[name]
        if max_batch is not None and arr.ndim and not 1 <= arr.shape[0] <= max_batch:
            raise InferenceInputError(
                f"Input '{name}' has batch {arr.shape[0]}; {what} for batches 1 to {max_batch}.",
                fix=f"split the input into batches of at most {max_batch}, or convert again with a larger "
                "max_batch in the profile.",
            )
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr).copy()
        tensors.append(torch.from_numpy(arr))
    return tensors
