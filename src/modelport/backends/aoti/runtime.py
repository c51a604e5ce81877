"""AOTInductor: runs ``model.pt2`` packages (``cpu-aoti``, ``cuda-aoti``) natively, without the model's Python code.

Loading a package ``dlopen``s the compiled library inside it, and PyTorch only warns (after loading) when the
package was built for another device or CPU. So the sidecar ``model.pt2.json`` is read and compared with this
machine first (``converters.aoti.check_sidecar``: PyTorch release, device kind, CPU instruction set and features
or GPU compute capability), the package's sha256 is checked against it, and only then is the package loaded.

Inference goes through the loader's flat entry point (``boxed_run``): numpy → torch (zero-copy on CPU; one
host→device copy on CUDA), outputs back to numpy. On CUDA, ``synchronize`` waits for the device; the timing loop
calls it inside the timed region, so no queued kernel escapes the clock. ``threads`` sets ``torch.set_num_threads``
(the OpenMP pool the compiled CPU kernels use) for the session and restores it on close.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.aoti.convert import (
    aoti_availability,
    check_sidecar,
    current_environment,
    device_index,
    device_kind,
    read_sidecar,
)
from modelport.backends.base import Feed, Runtime, Session, host_tensors
from modelport.backends.sidecar import check_describes
from modelport.core.files import sha256_file
from modelport.core.trust import require_trusted
from modelport.core.types import Artifact, Format, Precision
from modelport.errors import (
    InputError,
    RuntimeUnavailableError,
)

_REBUILD = "rebuild the package on this machine with 'modelport convert --profiles cpu-aoti' (or cuda-aoti)"


class AotiSession(Session):
    """One loaded package on one device."""

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        super().__init__(artifact, device, threads)
        self.kind = device_kind(device)
        self.asynchronous = self.kind == "cuda"  # CUDA kernels outlive the call: timing synchronizes
        self._index = device_index(device)
        self.sidecar: dict[str, Any] = {}
        self._model: Any = None
        self._run: Any = None
        self._names: list[str] = []
        self._max_batch: int | None = None
        self._prev_threads: int | None = None
        self._torch_device = f"cuda:{self._index}" if self.kind == "cuda" else "cpu"

    def _open(self) -> None:
        path = Path(self.artifact.path)
        if not path.is_file():
            raise RuntimeUnavailableError(f"The AOTInductor package {path} does not exist.", fix=_REBUILD + ".")
        sidecar = read_sidecar(path)  # first: no sidecar, no loading
        ok, why = aoti_availability(self.device)
        if not ok:
            raise RuntimeUnavailableError(f"Cannot run the AOTInductor package {path}: {why}.", fix=_REBUILD + ".")
        reason = check_sidecar(sidecar, current_environment(self.device))
        if reason is not None:
            raise RuntimeUnavailableError(f"Refusing {path}: {reason}.", fix=_REBUILD + ".")
        actual = sha256_file(path)
        check_describes(
            path, sidecar, what="package", sha_key="package_sha256", actual_sha256=actual,
            recorded_sha256=self.artifact.sha256, precision=str(self.artifact.precision), fix=_REBUILD + ".",
        )
        require_trusted(path, Format.AOTI_PACKAGE, file_sha256=actual)  # dlopen runs the library's code
        if self.kind == "cpu" and self.artifact.precision is Precision.BF16:
            from modelport.backends.bf16 import require_bf16

            require_bf16("cpu-aoti")  # emulated bf16 would be slower than FP32: no figure for it
        self.sidecar = sidecar
        batch = (sidecar.get("dynamic_shapes") or {}).get("batch") or {}
        self._max_batch = int(batch["max"]) if isinstance(batch.get("max"), int) else None

        import torch

        if self.threads is not None:
            self._prev_threads = torch.get_num_threads()
            torch.set_num_threads(int(self.threads))
        try:
            self._model = torch._inductor.aoti_load_package(
                str(path), device_index=self._index if self.kind == "cuda" else -1
            )
        except Exception as exc:
            self._restore_threads()
            raise RuntimeUnavailableError(
                f"PyTorch could not load the AOTInductor package {path}: {type(exc).__name__}: "
                f"{str(exc).strip()[:300]}",
                fix=_REBUILD + ".",
            ) from exc
        self._run = self._model.loader.boxed_run  # the flat native entry point, without per-call pytree specs
        self._names = [t.name for t in self.artifact.inputs]

    def _restore_threads(self) -> None:
        if self._prev_threads is not None:
            import torch

            torch.set_num_threads(self._prev_threads)
            self._prev_threads = None

    def _close(self) -> None:
        if self.kind == "cuda" and self._model is not None:
            self.synchronize()
        self._model = None
        self._run = None
        self._restore_threads()

    def _host_tensors(self, feed: Feed) -> list[Any]:
        """Feed arrays as CPU tensors in the package's input order."""
        return host_tensors(feed, self._names, self._max_batch, "this AOTInductor package was compiled")

    def _run_tensors(self, host: list[Any]) -> list[np.ndarray]:
        import torch

        # boxed_run consumes its list, so it gets a fresh one; on CUDA the host→device copy is part of each call
        args = [t.to(self._torch_device) for t in host] if self.kind == "cuda" else list(host)
        with torch.inference_mode():
            outs = self._run(args)
        return [o.cpu().numpy() for o in outs]  # .cpu() of a CUDA tensor waits for the kernels that produce it

    def _infer(self, feed: Feed) -> list[np.ndarray]:
        return self._run_tensors(self._host_tensors(feed))

    def _bind(self, feed: Feed) -> Callable[[], list[np.ndarray]]:
        """numpy → torch once; the timed call runs the package and fetches every output."""
        host = self._host_tensors(feed)
        return lambda: self._run_tensors(host)

    def synchronize(self) -> None:
        """Wait for queued GPU work (the timing loop calls it before stopping the clock); nothing to do on CPU."""
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize(self._index)


class AotiRuntime(Runtime):
    """Loads AOTInductor ``.pt2`` packages on ``CPU`` or ``cuda``/``cuda:N``."""

    name = "aoti"
    formats = frozenset({Format.AOTI_PACKAGE})

    def availability(self) -> tuple[bool, str]:
        ok, why = aoti_availability("CPU")
        if not ok:
            return ok, why
        build_ok, build_why = aoti_availability("CPU", compile=True)
        why = build_why if build_ok else f"{why}; packages can run but not be built here: {build_why}"
        cuda_ok, cuda_why = aoti_availability("cuda")
        return True, why + ("" if cuda_ok else f"; CUDA packages cannot run here: {cuda_why}")

    def devices(self) -> list[str]:
        if not aoti_availability("CPU")[0]:
            return []
        import torch

        cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        return ["CPU", *cuda]

    def device_available(self, device: str) -> tuple[bool, str]:
        ok, why = aoti_availability(device)
        if not ok:
            return False, why
        if device_kind(device) == "cpu" and str(device).strip().upper() != "CPU":
            return False, f"aoti runs on CPU or cuda[:N], not {device}."
        return True, ""

    def load(self, artifact: Artifact, device: str = "CPU", threads: int | None = None) -> Session:
        if artifact.format not in self.formats:
            raise InputError(
                f"The aoti runtime cannot load a '{artifact.format}' artifact ({artifact.path}); it loads "
                f"{Format.AOTI_PACKAGE}.",
                fix="benchmark the artifact with the runtime of its profile.",
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {threads!r}.", fix="pass e.g. --threads 4.")
        ok, why = self.device_available(device)
        if not ok:
            raise RuntimeUnavailableError(why, fix="use device 'CPU', or run on a machine with a CUDA GPU.")
        return AotiSession(artifact, device, threads)
