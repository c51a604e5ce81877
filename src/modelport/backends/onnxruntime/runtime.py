"""ONNX Runtime: runs ``.onnx`` artifacts on the CPU execution provider (or CUDA where present).

Session options are fixed so that runs are comparable: one inter-op thread, sequential execution, every graph
optimisation on; ``threads`` sets the intra-op pool (0 lets ONNX Runtime choose).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from modelport.backends.base import Feed, Runtime, Session
from modelport.core.types import Artifact, Format
from modelport.errors import InputError, RuntimeUnavailableError

_INSTALL_HINT = "onnxruntime is not installed: pip install onnxruntime"
_PROVIDERS = {"CPU": ["CPUExecutionProvider"], "CUDA": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _check_format(runtime: Runtime, artifact: Artifact) -> None:
    if artifact.format not in runtime.formats:
        raise InputError(
            f"The {runtime.name} runtime cannot load a '{artifact.format}' artifact ({artifact.path}); it loads "
            f"{', '.join(sorted(str(f) for f in runtime.formats))}.",
            fix="benchmark the artifact with the runtime of its profile.",
        )


def int8_cpu_note(artifact: Artifact) -> str | None:
    """Said when an INT8 artifact made for a CPU with VNNI (8-bit weights, ``reduce_range`` off) runs on one
    without: ONNX Runtime's u8×s8 kernels there add pairs of products in 16 bits and can saturate."""
    if str(artifact.precision) != "int8" or artifact.details.get("reduce_range") is not False:
        return None
    from modelport.core.cpu import cpu_info

    cpu = cpu_info()
    if not cpu.known or cpu.vnni:
        return None
    return (
        f"this CPU lacks VNNI ({cpu.int8_class}) and the INT8 weights use 8 bits (reduce_range off, made for "
        f"{artifact.details.get('int8_options', {}).get('sources', {}).get('target_cpu', 'a VNNI CPU')}): ONNX "
        "Runtime's u8s8 kernels can saturate here; convert for this CPU (profile int8_target_cpu = 'avx2', as "
        "legacy-cpu)"
    )


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer or None, got {threads!r}.", fix="pass e.g. --threads 4.")


class OnnxRuntimeSession(Session):
    """One ``InferenceSession``, created on enter."""

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        super().__init__(artifact, device, threads)
        self._sess: Any = None

    def _new_session(self, intra_op_threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.artifact.path), sess_options=opts, providers=_PROVIDERS[self.device])

    def _open(self) -> None:
        self._sess = self._new_session(self.threads or 0)

    def _infer(self, feed: Feed) -> list[np.ndarray]:
        return list(self._sess.run(None, feed))

    def _bind(self, feed: Feed) -> Callable[[], list[np.ndarray]]:
        # exactly the call a bare ``session.run`` loop makes (it returns a list of fresh arrays)
        return functools.partial(self._sess.run, None, feed)

    def settings(self) -> dict[str, Any]:
        """Thread settings as passed (0 = ONNX Runtime picks one per physical core) and the providers in use."""
        return {
            "intra_op_num_threads": self.threads or 0,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "providers": list(self._sess.get_providers()),
        }

    def run_throughput(self, feed: Feed, *, seconds: float, warmup_seconds: float,
                       streams: int | None = None) -> dict[str, Any]:
        """Items per second with ``streams`` concurrent sessions, one Python thread each (``run`` drops the GIL).

        ONNX Runtime has no async queue on CPU, so concurrency is several sessions sharing the thread budget:
        each gets ``max(1, threads // streams)`` intra-op threads; default streams = the thread budget.
        """
        budget = self.threads or os.cpu_count() or 1
        streams = max(1, int(streams or budget))
        intra = max(1, budget // streams)
        sessions = [self._new_session(intra) for _ in range(streams)]
        clock = time.perf_counter_ns
        counts = [0] * streams
        latencies: list[list[int]] = [[] for _ in range(streams)]
        barrier = threading.Barrier(streams + 1)
        window: dict[str, int] = {}

        def worker(i: int) -> None:
            sess = sessions[i]
            barrier.wait()
            while clock() < window["warm_end"]:
                sess.run(None, feed)
            barrier.wait()  # every worker warm
            barrier.wait()  # timed window set
            while clock() < window["end"]:
                t = clock()
                sess.run(None, feed)
                latencies[i].append(clock() - t)
                counts[i] += 1

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(streams)]
        for t in threads:
            t.start()
        window["warm_end"] = clock() + int(warmup_seconds * 1e9)
        barrier.wait()
        barrier.wait()
        t0 = clock()
        window["end"] = t0 + int(seconds * 1e9)  # set before releasing the workers into the timed window
        barrier.wait()
        for t in threads:
            t.join()
        elapsed = (clock() - t0) / 1e9
        flat = [x for lat in latencies for x in lat]
        return {
            "completed": sum(counts), "seconds": elapsed, "streams": streams, "requests": streams,
            "request_latency_ms_p50": float(np.median(flat)) / 1e6 if flat else None,
            "settings": {"sessions": streams, "intra_op_num_threads_each": intra, "inter_op_num_threads": 1},
            "engine": "onnxruntime concurrent sessions",
        }

    def _close(self) -> None:
        self._sess = None


class OnnxRuntimeRuntime(Runtime):
    name = "onnxruntime"
    formats = frozenset({Format.ONNX})

    def availability(self) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, _INSTALL_HINT
        for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
            try:
                return True, importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return True, "unknown version"

    def devices(self) -> list[str]:
        if not self.availability()[0]:
            return []
        import onnxruntime as ort

        devs = ["CPU"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            devs.append("CUDA")
        return devs

    def load(self, artifact: Artifact, device: str = "CPU", threads: int | None = None) -> Session:
        _check_format(self, artifact)
        _check_threads(threads)
        ok, why = self.device_available(device)
        if not ok:
            raise RuntimeUnavailableError(why, fix="choose a device from the list, or run on a machine that has it.")
        if device not in _PROVIDERS:
            raise RuntimeUnavailableError(f"onnxruntime in modelport runs on {', '.join(_PROVIDERS)}, not {device}.")
        session = OnnxRuntimeSession(artifact, device, threads)
        note = int8_cpu_note(artifact) if device == "CPU" else None
        if note:
            session.notes.append(note)
        return session
