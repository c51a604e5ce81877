"""ONNX Runtime: runs ``.onnx`` artifacts on the CPU execution provider (or CUDA where present).

Session options are fixed so that runs are comparable: one inter-op thread, sequential execution, every graph
optimisation on; ``threads`` sets the intra-op pool (0 lets ONNX Runtime choose).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

import numpy as np

from modelport.core.types import Artifact, Format
from modelport.errors import InputError, RuntimeUnavailableError
from modelport.runtimes.base import Feed, Runtime, Session

_INSTALL_HINT = "onnxruntime is not installed: pip install onnxruntime"
_PROVIDERS = {"CPU": ["CPUExecutionProvider"], "CUDA": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _check_format(runtime: Runtime, artifact: Artifact) -> None:
    if artifact.format not in runtime.formats:
        raise InputError(
            f"The {runtime.name} runtime cannot load a '{artifact.format}' artifact ({artifact.path}); it loads "
            f"{', '.join(sorted(str(f) for f in runtime.formats))}.",
            fix="benchmark the artifact with the runtime of its profile.",
        )


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer or None, got {threads!r}.", fix="pass e.g. --threads 4.")


class OnnxRuntimeSession(Session):
    """One ``InferenceSession``, created on enter."""

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        super().__init__(artifact, device, threads)
        self._sess: Any = None

    def _open(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or 0
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._sess = ort.InferenceSession(str(self.artifact.path), sess_options=opts, providers=_PROVIDERS[self.device])

    def _infer(self, feed: Feed) -> list[np.ndarray]:
        return list(self._sess.run(None, feed))

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
        return OnnxRuntimeSession(artifact, device, threads)
