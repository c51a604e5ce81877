"""PyTorch eager: the reference every exported artifact is compared with.

A PYTORCH artifact is a safetensors state dict plus ``details["arch"]``/``details["model_kwargs"]`` to rebuild
the module. When no registry architecture fits (a Python-API module, or a recipe that changed the structure:
structured pruning, low-rank), ``convert`` also saves the module as a ``torch.export`` program
(``details["program"]``, dynamic batch) so that a separate process (``bench``'s isolated children, a later
``modelport bench``) can load it. In-process, the module is also registered under the artifact's sha256
(``register_module``); lookup order is registry, then arch, then program.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.backends.base import Feed, Runtime, Session
from modelport.backends.onnxruntime.runtime import _check_format, _check_threads
from modelport.core.types import Artifact, Format
from modelport.errors import CheckpointError, RuntimeUnavailableError

if TYPE_CHECKING:
    from torch import nn

_MODULES: dict[str, "nn.Module"] = {}


def register_module(sha256: str, module: "nn.Module") -> None:
    """Make ``module`` loadable for PYTORCH artifacts whose ``sha256`` is this key (in this process only)."""
    if not sha256:
        raise ValueError("register_module needs a non-empty sha256 key")
    _MODULES[sha256] = module


def unregister_module(sha256: str) -> None:
    _MODULES.pop(sha256, None)


def export_program(
    module: "nn.Module", examples: Mapping[str, Any], path: Path,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> str:
    """Save ``module`` (in eval mode) as a ``torch.export`` program with a dynamic batch dimension (and the
    ``dynamic_axes`` convert exported dynamic, {input: {axis: name}}); return its sha256.

    The examples are repeated to batch 2 first: an example batch of 1 would specialise the batch dimension."""
    import torch

    from modelport.core.files import atomic_path, sha256_file

    ex = {k: torch.cat([v, v]) if v.shape[0] == 1 else v for k, v in examples.items()}
    dyn = torch.export.Dim.DYNAMIC
    shapes = {k: {0: dyn, **{int(a): dyn for a in ((dynamic_axes or {}).get(k) or {})}} for k in ex}
    was_training = module.training
    module.eval()
    try:
        if len(ex) == 1:
            program = torch.export.export(module, (next(iter(ex.values())),), dynamic_shapes=tuple(shapes.values()))
        else:
            program = torch.export.export(module, (), kwargs=ex, dynamic_shapes=shapes)
    finally:
        module.train(was_training)
    from modelport.core.trust import record_produced

    with atomic_path(Path(path)) as tmp:
        torch.export.save(program, str(tmp))
        sha = sha256_file(tmp)
    record_produced(Path(path), Format.PYTORCH, sha256=sha)  # this machine wrote it: it may load it again later
    return sha


def _load_program(artifact: Artifact, name: str) -> "nn.Module":
    """The module of the artifact's ``torch.export`` program, loaded only when this machine trusts the file.

    ``torch.export.load`` unpickles (its own docs: "uses pickle under the hood ... never load data from an untrusted
    source"). The manifest's ``program_sha256`` only proves that the manifest and the file agree (whoever edits one
    edits both), so the trust decision is ``core.trust.require_trusted``: the sha256 of the very bytes that are then
    unpickled must be in this machine's trust store (it wrote the file) or granted for this run (``--trust``, a
    trusted signature). Anything else is refused before a byte is unpickled."""
    import io

    import torch

    from modelport.core.trust import require_trusted

    expected = artifact.details.get("program_sha256")
    path = artifact.path.parent / name
    if Path(name).name != name or path.is_symlink() or not path.is_file():
        raise CheckpointError(f"PyTorch program '{name}' of {artifact.path} is missing or not a plain file name.",
                              fix="convert the checkpoint again.")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if not expected or actual != expected:
        raise CheckpointError(
            f"PyTorch program {path} has sha256 {actual}, not the {expected or '(none)'} recorded in the manifest; "
            "it is refused (torch.export files unpickle, so only the file convert wrote is loaded).",
            fix="convert the checkpoint again rather than editing or copying files into its folder.",
        )
    require_trusted(path, Format.PYTORCH, data=data)
    return torch.export.load(io.BytesIO(data)).module()


def program_file(artifact: Artifact) -> Path | None:
    """The ``torch.export`` program ``module_for`` would unpickle for ``artifact``, or None when nothing would be
    (a module registered in this process, or an architecture rebuilt from its safetensors weights): the file whose
    trust decides whether this artifact may be loaded."""
    program = artifact.details.get("program")
    if (artifact.sha256 and artifact.sha256 in _MODULES) or artifact.details.get("arch") or not isinstance(program, str):
        return None
    return artifact.path.parent / program


def _to_numpy_list(out: Any) -> list[np.ndarray]:
    """Flatten a tensor / tuple / list / dict of tensors into numpy arrays, in order."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, Mapping):
        return [a for v in out.values() for a in _to_numpy_list(v)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in _to_numpy_list(v)]
    raise TypeError(f"model output of type {type(out).__name__} is not a tensor, tuple, list or dict of tensors")


def module_for(artifact: Artifact) -> "nn.Module":
    """The module behind a PYTORCH artifact: the one registered for its sha256 (Python API), else rebuilt from
    ``details['arch']`` + ``model_kwargs`` and its safetensors file, else loaded from its ``torch.export`` program
    (``details['program']``, sha256-checked). Converters that start from PyTorch use it too."""
    sha = artifact.sha256
    if sha and sha in _MODULES:
        return _MODULES[sha]
    arch = artifact.details.get("arch")
    program = artifact.details.get("program")
    if not arch and isinstance(program, str):
        return _load_program(artifact, program)
    if not arch:
        raise RuntimeUnavailableError(
            f"PyTorch artifact {artifact.path} has no registered module for sha256 '{sha or '(none)'}' "
            "and no 'arch' in its details, so it cannot be rebuilt.",
            fix="register the module with modelport.backends.torch.runtime.register_module(sha256, module), "
            "or give details={'arch': ..., 'model_kwargs': {...}}.",
        )
    if not artifact.path.is_file():
        raise CheckpointError(
            f"State dict {artifact.path} for '{arch}' does not exist.", fix="convert the checkpoint again."
        )
    from safetensors.torch import load_file

    from modelport.models import build_model

    module = build_model(arch, **dict(artifact.details.get("model_kwargs") or {}))
    try:
        module.load_state_dict(load_file(str(artifact.path)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"State dict {artifact.path} does not fit '{arch}': {str(exc).splitlines()[0]}",
            fix="check 'arch' and 'model_kwargs' in the artifact details.",
        ) from exc
    return module


class TorchEagerSession(Session):
    """The module in eval mode under ``torch.inference_mode``."""

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        super().__init__(artifact, device, threads)
        self._module: Any = None
        self._was_training: bool | None = None
        self._prev_threads: int | None = None
        self._torch_device = "cuda" if device.upper().startswith("CUDA") else "cpu"
        self.asynchronous = self._torch_device == "cuda"  # CUDA kernels outlive the call: timing synchronizes

    def _build(self) -> "nn.Module":
        return module_for(self.artifact)

    def _open(self) -> None:
        import torch

        module = self._build()
        self._was_training = bool(module.training)
        if self._torch_device == "cuda":
            import copy

            module = copy.deepcopy(module).to("cuda")  # never move the caller's registered module
        try:
            module.eval()
        except NotImplementedError:  # a torch.export program's module: traced in eval mode already, has no mode
            self._was_training = False
        if self.threads is not None:
            self._prev_threads = torch.get_num_threads()
            torch.set_num_threads(int(self.threads))
        self._module = module

    def _infer(self, feed: Feed) -> list[np.ndarray]:
        import torch

        names = [s.name for s in self.inputs] or list(feed)
        tensors = []
        for name in names:
            arr = feed[name]
            if not arr.flags.writeable:  # torch.from_numpy warns on read-only memory
                arr = arr.copy()
            tensors.append(torch.from_numpy(arr).to(self._torch_device))
        with torch.inference_mode():
            if len(tensors) == 1:
                out = self._module(tensors[0])
            else:
                out = self._module(**dict(zip(names, tensors, strict=True)))
        return _to_numpy_list(out)

    def synchronize(self) -> None:
        """Wait for queued GPU work (the timing loop calls it before stopping the clock)."""
        if self._torch_device == "cuda":
            import torch

            torch.cuda.synchronize()

    def _close(self) -> None:
        import torch

        if self._prev_threads is not None:
            torch.set_num_threads(self._prev_threads)
            self._prev_threads = None
        if self._module is not None and self._was_training and self._torch_device == "cpu":
            self._module.train(True)  # give a registered module back as it came
        self._module = None


class TorchEagerRuntime(Runtime):
    name = "torch"
    formats = frozenset({Format.PYTORCH})

    register_module = staticmethod(register_module)
    unregister_module = staticmethod(unregister_module)

    def availability(self) -> tuple[bool, str]:
        if importlib.util.find_spec("torch") is None:
            return False, "torch is not installed: pip install torch"
        try:
            return True, importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return True, "unknown version"

    def devices(self) -> list[str]:
        if not self.availability()[0]:
            return []
        import torch

        return ["CPU", "CUDA"] if torch.cuda.is_available() else ["CPU"]

    def load(self, artifact: Artifact, device: str = "CPU", threads: int | None = None) -> Session:
        _check_format(self, artifact)
        _check_threads(threads)
        ok, why = self.device_available(device)
        if not ok:
            raise RuntimeUnavailableError(why, fix="use device 'CPU'.")
        return TorchEagerSession(artifact, device, threads)
