"""TensorRT: runs ``model.engine`` artifacts on a CUDA GPU (TensorRT 10 execution API, ``execute_async_v3``).

An engine only runs on the GPU model and TensorRT version that built it, and TensorRT may crash or misbehave
rather than refuse a foreign engine. So the sidecar ``model.engine.json`` is read first and compared with this
machine (``check_sidecar``); an engine without a matching sidecar is never deserialised.

Device buffers are torch CUDA tensors, the copies go through pinned host memory on one explicit stream, and
each ``infer`` synchronises that stream before returning. CUDA events time the three phases; the last figures
are kept in ``last_h2d_ms``, ``last_compute_ms`` and ``last_d2h_ms`` so copy time can be reported apart from
compute.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.base import Feed, Runtime, Session
from modelport.backends.sidecar import check_describes
from modelport.backends.tensorrt.build import make_trt_logger, torch_dtype
from modelport.backends.tensorrt.facts import SCRIPT_NAME, current_environment, tensorrt_availability
from modelport.core.trust import require_trusted
from modelport.core.types import Artifact, Format
from modelport.errors import (
    InferenceInputError,
    InputError,
    ModelportError,
    RuntimeUnavailableError,
    ValidationError,
)

SIDECAR_KEYS = ("tensorrt_version", "gpu_name", "compute_capability")
_REBUILD = f"rebuild from model.onnx with {SCRIPT_NAME} on this machine"


def check_sidecar(sidecar: Any, present: dict[str, str]) -> str | None:
    """Why an engine described by ``sidecar`` cannot run here (``present``: this machine's facts), or ``None``.

    Both dicts carry ``tensorrt_version``, ``gpu_name`` and ``compute_capability``; all three must match exactly.
    """
    if not isinstance(sidecar, dict):
        return f"the engine sidecar is not a JSON object, so the engine cannot be matched to this machine: {_REBUILD}"
    missing = [k for k in SIDECAR_KEYS if not str(sidecar.get(k) or "").strip()]
    if missing:
        return (
            f"the engine sidecar lacks {', '.join(missing)}, so the engine cannot be matched to this machine: "
            f"{_REBUILD}"
        )
    if all(str(sidecar[k]).strip() == str(present.get(k, "")).strip() for k in SIDECAR_KEYS):
        return None
    return (
        f"engine built for {sidecar['gpu_name']} (compute {sidecar['compute_capability']})/TRT "
        f"{sidecar['tensorrt_version']}, this machine has {present.get('gpu_name')} (compute "
        f"{present.get('compute_capability')})/TRT {present.get('tensorrt_version')}: {_REBUILD}"
    )


def read_sidecar(engine: Path) -> dict[str, Any]:
    """The sidecar of ``engine``; ``RuntimeUnavailableError`` when it is missing or unreadable."""
    from modelport.backends.sidecar import read_sidecar_json

    return read_sidecar_json(
        engine,
        what="engine",
        missing_means="so nothing says which GPU and TensorRT version built it; modelport does not load such engines",
        fix=_REBUILD + " (it writes the sidecar)",
    )


def machine_problem(engine: Path, device: str = "cuda") -> str | None:
    """Why the engine at ``engine`` cannot run on ``device`` of this machine (its sidecar against this GPU and
    TensorRT), or ``None``. Reads nothing but the sidecar: the engine is never touched."""
    try:
        sidecar = read_sidecar(engine)
    except ModelportError as exc:
        return exc.message
    ok, why = tensorrt_availability()
    if not ok:
        return (
            f"TensorRT is not usable here ({why}); the engine was built for {sidecar.get('gpu_name')} / "
            f"TensorRT {sidecar.get('tensorrt_version')}"
        )
    return check_sidecar(sidecar, current_environment(parse_device(device)))


def parse_device(device: str) -> int:
    """``"cuda"`` → 0, ``"cuda:1"`` → 1; anything else is refused."""
    m = re.fullmatch(r"(?i)(?:cuda|gpu)(?::(\d+))?", str(device).strip())
    if m is None:
        raise InputError(
            f"The tensorrt runtime runs on CUDA devices, not '{device}'.", fix="pass device 'cuda' or 'cuda:N'."
        )
    return int(m.group(1) or 0)


class TensorRtSession(Session):
    """One deserialised engine, one execution context, one CUDA stream; buffers grow to the largest batch seen."""

    asynchronous = True  # work is queued on a CUDA stream: the timing loop calls synchronize()

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        super().__init__(artifact, device, threads)
        self._index = parse_device(device)
        self.sidecar: dict[str, Any] = {}
        self.last_h2d_ms: float | None = None
        self.last_compute_ms: float | None = None
        self.last_d2h_ms: float | None = None
        self._engine: Any = None
        self._context: Any = None
        self._runtime: Any = None
        self._logger: Any = None
        self._stream: Any = None
        self._events: list[Any] = []
        self._in_names: list[str] = []
        self._out_names: list[str] = []
        self._np_dtype: dict[str, np.dtype] = {}
        self._dev: dict[str, Any] = {}
        self._pinned: dict[str, Any] = {}

    # ------------------------------------------------------------------ open / close
    def _open(self) -> None:
        path = Path(self.artifact.path)
        sidecar = read_sidecar(path)  # first: no sidecar, no engine
        ok, why = tensorrt_availability()
        if not ok:
            raise RuntimeUnavailableError(
                f"Cannot run the TensorRT engine {path}: {why}",
                fix="run it on the device it was built for (NVIDIA GPU with TensorRT 10).",
            )
        import tensorrt as trt
        import torch

        if self._index >= torch.cuda.device_count():
            raise RuntimeUnavailableError(
                f"Device cuda:{self._index} does not exist; this machine has {torch.cuda.device_count()} "
                "CUDA device(s).",
                fix="pass cuda:0 … cuda:N-1.",
            )
        reason = check_sidecar(sidecar, current_environment(self._index))
        if reason is not None:
            raise RuntimeUnavailableError(f"Refusing {path}: {reason}.", fix=_REBUILD + ".")
        blob = path.read_bytes()  # hashed, trust-checked and deserialised: the same bytes
        check_describes(
            path, sidecar, what="engine", sha_key="engine_sha256", actual_sha256=hashlib.sha256(blob).hexdigest(),
            recorded_sha256=None, precision=str(self.artifact.precision), fix=_REBUILD + ".",
        )
        require_trusted(path, Format.TENSORRT_ENGINE, data=blob)  # an engine may carry plugin code
        self.sidecar = sidecar
        with torch.cuda.device(self._index):
            self._logger = make_trt_logger(trt)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(blob)
            if self._engine is None:
                raise RuntimeUnavailableError(
                    f"TensorRT could not deserialise {path}: {'; '.join(self._logger.errors[-3:]) or 'no detail'}.",
                    fix=_REBUILD + ".",
                )
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=self._index)
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self._bind_names(trt)

    def _bind_names(self, trt: Any) -> None:
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        declared_in = [t.name for t in self.artifact.inputs]
        if sorted(declared_in) != sorted(ins):
            raise ValidationError(
                f"The engine's inputs {ins} differ from the artifact's {declared_in}.",
                fix="regenerate the folder with 'modelport convert'.",
            )
        declared_out = [t.name for t in self.artifact.outputs]
        if declared_out and sorted(declared_out) != sorted(outs):
            raise ValidationError(
                f"The engine's outputs {outs} differ from the artifact's {declared_out}.",
                fix="regenerate the folder with 'modelport convert'.",
            )
        self._in_names = declared_in
        self._out_names = declared_out or outs
        for n in names:
            self._np_dtype[n] = np.dtype(trt.nptype(self._engine.get_tensor_dtype(n)))

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._context = None
        self._engine = None
        self._runtime = None
        self._dev.clear()
        self._pinned.clear()
        self._stream = None
        self._events = []

    # ------------------------------------------------------------------ inference
    def _buffer(self, pool: dict[str, Any], name: str, shape: tuple[int, ...], *, host: bool) -> Any:
        """A view of ``shape`` into a reusable flat buffer that only grows (pinned host or device)."""
        import torch

        numel = math.prod(shape)
        buf = pool.get(name)
        if buf is None or buf.numel() < numel:
            dtype = torch_dtype(self._np_dtype[name])
            if host:
                buf = torch.empty(max(numel, 1), dtype=dtype).pin_memory()
            else:
                buf = torch.empty(max(numel, 1), dtype=dtype, device=f"cuda:{self._index}")
            pool[name] = buf
        return buf[:numel].view(shape)

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        ok = self._context.set_input_shape(name, shape)
        if not ok:
            rng = ""
            if self._engine.num_optimization_profiles > 0:
                lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
                rng = f" The engine accepts {tuple(lo)} to {tuple(hi)}."
            raise InferenceInputError(
                f"TensorRT refused shape {shape} for input '{name}'.{rng}",
                fix="use a batch inside the engine's optimisation profile, or rebuild with a larger max_batch.",
            )

    def _infer(self, feed: Feed) -> list[np.ndarray]:
        import torch

        ctx = self._context
        ev = self._events
        with torch.cuda.device(self._index), torch.cuda.stream(self._stream):
            pending = []
            for name in self._in_names:  # stage on the host first, so the events time only the copies
                arr = np.ascontiguousarray(feed[name], dtype=self._np_dtype[name])
                self._set_shape(name, tuple(arr.shape))
                host = self._buffer(self._pinned, name, tuple(arr.shape), host=True)
                host.numpy()[...] = arr
                dev = self._buffer(self._dev, name, tuple(arr.shape), host=False)
                ctx.set_tensor_address(name, dev.data_ptr())
                pending.append((dev, host))
            outs = []
            for name in self._out_names:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeUnavailableError(
                        f"Output '{name}' has a data-dependent shape {shape}; modelport's TensorRT runtime needs "
                        "output shapes known from the input shapes.",
                        fix="export the model with outputs whose shape follows from the inputs.",
                    )
                dev = self._buffer(self._dev, name, shape, host=False)
                ctx.set_tensor_address(name, dev.data_ptr())
                outs.append((dev, self._buffer(self._pinned, name, shape, host=True)))

            ev[0].record(self._stream)
            for dev, host in pending:
                dev.copy_(host, non_blocking=True)
            ev[1].record(self._stream)
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeUnavailableError(
                    f"TensorRT failed to run {self.artifact.path}: "
                    f"{'; '.join(self._logger.errors[-3:]) or 'no detail'}.",
                    fix=_REBUILD + ".",
                )
            ev[2].record(self._stream)
            for dev, host in outs:
                host.copy_(dev, non_blocking=True)
            ev[3].record(self._stream)
            self._stream.synchronize()
        self.last_h2d_ms = ev[0].elapsed_time(ev[1])
        self.last_compute_ms = ev[1].elapsed_time(ev[2])
        self.last_d2h_ms = ev[2].elapsed_time(ev[3])
        return [host.numpy().copy() for _, host in outs]  # the pinned buffers are reused by the next call

    def synchronize(self) -> None:
        """Wait for everything queued on this session's stream (``infer`` already does before returning)."""
        if self._stream is not None:
            self._stream.synchronize()


class TensorRtRuntime(Runtime):
    """Runs TensorRT engines on CUDA devices (``cuda`` / ``cuda:N``); ``threads`` has no meaning here."""

    name = "tensorrt"
    formats = frozenset({Format.TENSORRT_ENGINE})

    def availability(self) -> tuple[bool, str]:
        return tensorrt_availability()

    def devices(self) -> list[str]:
        if not self.availability()[0]:
            return []
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    def device_available(self, device: str) -> tuple[bool, str]:
        ok, why = self.availability()
        if not ok:
            return False, why
        try:
            index = parse_device(device)
        except InputError as exc:
            return False, str(exc)
        devs = self.devices()
        if f"cuda:{index}" in devs:
            return True, ""
        return False, f"tensorrt sees devices {devs or 'none'} on this machine, not {device}."

    def load(self, artifact: Artifact, device: str = "cuda:0", threads: int | None = None) -> Session:
        if artifact.format not in self.formats:
            raise InputError(
                f"The tensorrt runtime cannot load a '{artifact.format}' artifact ({artifact.path}); it loads "
                f"{Format.TENSORRT_ENGINE}.",
                fix="benchmark the artifact with the runtime of its profile.",
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(
                f"threads must be a positive integer or None, got {threads!r}.", fix="pass e.g. --threads 4."
            )
        return TensorRtSession(artifact, device, threads)
