"""ExecuTorch: runs ``model.pte`` programs (``edge-xnnpack``) in ExecuTorch's own runtime on the CPU.

The program is loaded with ``executorch.runtime`` (the C++ runtime behind Python bindings) with FlatBuffer
verification on (``Verification.InternalConsistency``), so a damaged or foreign file is refused by the loader;
files that do not carry the ExecuTorch identifier are refused before the loader sees them. The XNNPACK delegate
blobs inside are initialised when the method is loaded, on this CPU.

Inference: numpy → torch tensors without a copy (``torch.from_numpy``), ``Method.execute``, outputs back to numpy.
The program's memory was planned for a largest batch; its input metadata holds that upper bound, and a larger
batch is refused here with the limit rather than by the runtime's resize error. ``threads`` sets the size of
ExecuTorch's process-wide thread pool (the one XNNPACK runs on) for the session and restores it on close; the pool
is shared, so sessions with different ``threads`` must not run at the same time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.base import Feed, Runtime, Session, host_tensors
from modelport.backends.executorch.convert import METHOD_NAME, executorch_availability
from modelport.core.types import Artifact, Format
from modelport.errors import (
    InputError,
    RuntimeUnavailableError,
    ValidationError,
)

_RECONVERT = "convert again with 'modelport convert --profiles edge-xnnpack'"
_MAGIC = b"ET"  # FlatBuffer file identifier at bytes 4..8: "ET" + two-character schema version ("ET12")


def _is_program_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:6] == _MAGIC


class ExecuTorchSession(Session):
    """One loaded program and its ``forward`` method."""

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        super().__init__(artifact, device, threads)
        self._program: Any = None
        self._method: Any = None
        self._order: list[str] = []
        self._max_batch: int | None = None
        self._prev_threads: int | None = None

    def _open(self) -> None:
        path = Path(self.artifact.path)
        if not path.is_file():
            raise RuntimeUnavailableError(f"The ExecuTorch program {path} does not exist.", fix=_RECONVERT + ".")
        if not _is_program_file(path):
            raise ValidationError(
                f"{path} is not an ExecuTorch program (no 'ET' FlatBuffer identifier).", fix=_RECONVERT + "."
            )
        ok, why = executorch_availability()
        if not ok:
            raise RuntimeUnavailableError(f"Cannot run the ExecuTorch program {path}: {why}.")
        from executorch.runtime import Runtime, Verification

        try:
            program = Runtime.get().load_program(str(path), verification=Verification.InternalConsistency)
            if METHOD_NAME not in program.method_names:
                raise ValidationError(
                    f"{path} has no '{METHOD_NAME}' method (it has {', '.join(sorted(program.method_names)) or 'none'}).",
                    fix=_RECONVERT + ".",
                )
            meta = program.metadata(METHOD_NAME)
        except ValidationError:
            raise
        except Exception as exc:
            raise ValidationError(
                f"ExecuTorch refused the program {path}: {type(exc).__name__}: {str(exc).strip()[:300]}",
                fix=_RECONVERT + " (a program from a newer ExecuTorch may need that runtime release).",
            ) from exc
        names = [t.name for t in self.artifact.inputs]
        if meta.num_inputs() != len(names):
            raise ValidationError(
                f"{path} takes {meta.num_inputs()} input(s); the manifest records {len(names)}: {', '.join(names)}.",
                fix=_RECONVERT + ".",
            )
        order = self.artifact.details.get("input_order")
        self._order = [str(n) for n in order] if isinstance(order, list) and sorted(order) == sorted(names) else names
        bounds = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        self._max_batch = min((b[0] for b in bounds if b), default=None)

        if self.threads is not None:
            from executorch.extension.pybindings import portable_lib

            self._prev_threads = int(portable_lib._threadpool_get_thread_count())
            portable_lib._unsafe_reset_threadpool(int(self.threads))
        try:
            method = program.load_method(METHOD_NAME)
        except Exception as exc:
            self._restore_threads()
            raise RuntimeUnavailableError(
                f"ExecuTorch could not initialise {path} (its delegates or kernels are missing from this runtime?): "
                f"{type(exc).__name__}: {str(exc).strip()[:300]}",
                fix=_RECONVERT + " with the executorch release installed here.",
            ) from exc
        self._program, self._method = program, method

    def _restore_threads(self) -> None:
        if self._prev_threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(self._prev_threads)
            self._prev_threads = None

    def _close(self) -> None:
        self._method = None
        self._program = None
        self._restore_threads()

    def _tensors(self, feed: Feed) -> list[Any]:
        """Feed arrays as CPU tensors in the program's input order."""
        return host_tensors(feed, self._order, self._max_batch, "this ExecuTorch program's memory is planned")

    def _run(self, tensors: list[Any]) -> list[np.ndarray]:
        outs = self._method.execute(tensors)
        return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]

    def _infer(self, feed: Feed) -> list[np.ndarray]:
        return self._run(self._tensors(feed))

    def _bind(self, feed: Feed) -> Callable[[], list[np.ndarray]]:
        """numpy → torch once; the timed call runs the method and fetches every output."""
        tensors = self._tensors(feed)
        return lambda: self._run(tensors)


class ExecuTorchRuntime(Runtime):
    """Loads ExecuTorch ``.pte`` programs on the CPU (XNNPACK delegate, portable kernels for the rest)."""

    name = "executorch"
    formats = frozenset({Format.EXECUTORCH_PROGRAM})

    def availability(self) -> tuple[bool, str]:
        ok, why = executorch_availability()
        if not ok:
            return ok, why
        build_ok, build_why = executorch_availability(lower=True, quantize=True)
        return True, why if build_ok else f"{why}; programs can run but not be built here: {build_why}"

    def devices(self) -> list[str]:
        return ["CPU"] if executorch_availability()[0] else []

    def load(self, artifact: Artifact, device: str = "CPU", threads: int | None = None) -> Session:
        if artifact.format not in self.formats:
            raise InputError(
                f"The executorch runtime cannot load a '{artifact.format}' artifact ({artifact.path}); it loads "
                f"{Format.EXECUTORCH_PROGRAM}.",
                fix="benchmark the artifact with the runtime of its profile.",
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {threads!r}.", fix="pass e.g. --threads 4.")
        ok, why = self.device_available(device)
        if not ok:
            raise RuntimeUnavailableError(why, fix="use device 'CPU'.")
        return ExecuTorchSession(artifact, device, threads)
