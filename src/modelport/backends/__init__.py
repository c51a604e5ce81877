"""The one place that knows each backend.

``BACKENDS`` is a table, not a plugin system: each row names a backend's formats, its converter and runtime as
``"module:attr"`` strings (resolved on use, so ``modelport --help`` never imports a heavy runtime), the
distributions whose versions results and bundles record, its colour in reports, which of its formats carry
executable code (and so must never be loaded from an untrusted folder or bundle), and its machine check (the
sidecar hook that says whether a built artifact matches this machine). Every other module asks this table instead of
keeping its own list: environment capture, report colours, merge warnings, pack's version record, bundle verify,
the isolated bench child.

Adding a backend = one folder under ``backends/`` (``convert.py`` + ``runtime.py``), one row here and one profile
in ``core/profiles.toml``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelport.core.registry import resolve
from modelport.core.types import Format
from modelport.errors import unknown_choice

if TYPE_CHECKING:
    from modelport.backends.base import Converter, Runtime
    from modelport.core.profiles import DeviceProfile


@dataclass(frozen=True)
class Backend:
    """What the project knows about one backend. Data only; the classes are resolved on use."""

    name: str
    label: str
    formats: tuple[Format, ...]
    runtime: str  # "module:attr" of the Runtime class
    converter: str | None = None  # "module:attr" of the Converter class; None: nothing converts *to* it
    distributions: tuple[str, ...] = ()  # PyPI names whose installed version is recorded (first found wins)
    compared_versions: bool = False  # a version difference across merged results is warned about
    colour: str = "#7f7f7f"
    code_formats: tuple[Format, ...] = ()  # formats whose loading can run code from the file
    machine_check: str | None = None  # "module:attr" (artifact path, device) -> why it cannot run here | None
    notes: tuple[str, ...] = field(default_factory=tuple)


BACKENDS: dict[str, Backend] = {
    "torch": Backend(
        name="torch",
        label="PyTorch (eager)",
        formats=(Format.PYTORCH,),
        runtime="modelport.backends.torch.runtime:TorchEagerRuntime",
        distributions=("torch",),
        compared_versions=True,
        colour="#7f7f7f",
        code_formats=(Format.PYTORCH,),  # torch.export programs are pickles
    ),
    "onnxruntime": Backend(
        name="onnxruntime",
        label="ONNX Runtime",
        formats=(Format.ONNX,),
        runtime="modelport.backends.onnxruntime.runtime:OnnxRuntimeRuntime",
        converter="modelport.backends.onnxruntime.convert:OnnxRuntimeConverter",
        distributions=("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
        compared_versions=True,
        colour="#1f77b4",
    ),
    "openvino": Backend(
        name="openvino",
        label="OpenVINO",
        formats=(Format.OPENVINO_IR,),
        runtime="modelport.backends.openvino.runtime:OpenVinoRuntime",
        converter="modelport.backends.openvino.convert:OpenVinoConverter",
        distributions=("openvino",),
        compared_versions=True,
        colour="#8c2d9c",
    ),
    "tensorrt": Backend(
        name="tensorrt",
        label="TensorRT",
        formats=(Format.TENSORRT_ENGINE,),
        runtime="modelport.backends.tensorrt.runtime:TensorRtRuntime",
        converter="modelport.backends.tensorrt.convert:TensorRtConverter",
        distributions=("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12", "tensorrt_cu13"),
        colour="#2ca02c",
        code_formats=(Format.TENSORRT_ENGINE,),  # engines may embed plugin code
        machine_check="modelport.backends.tensorrt.runtime:machine_problem",  # the sidecar model.engine.json
    ),
    "aoti": Backend(
        name="aoti",
        label="AOTInductor",
        formats=(Format.AOTI_PACKAGE,),
        runtime="modelport.backends.aoti.runtime:AotiRuntime",
        converter="modelport.backends.aoti.convert:AotiConverter",  # from the PyTorch reference, not ONNX
        distributions=("torch",),
        colour="#d62728",
        code_formats=(Format.AOTI_PACKAGE,),  # a compiled shared library
        machine_check="modelport.backends.aoti.convert:machine_problem",  # the sidecar model.pt2.json
    ),
    "executorch": Backend(
        name="executorch",
        label="ExecuTorch (XNNPACK)",
        formats=(Format.EXECUTORCH_PROGRAM,),
        runtime="modelport.backends.executorch.runtime:ExecuTorchRuntime",
        converter="modelport.backends.executorch.convert:ExecuTorchConverter",  # from the PyTorch reference
        distributions=("executorch",),
        colour="#ff7f0e",
        # a .pte is a flatbuffer program loaded with its verifier on: no pickle, no native code of its own
    ),
}

# Distributions recorded beside the backends' own: the exporter and the quantizer.
TOOL_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {"onnx": ("onnx",), "nncf": ("nncf",)}
COMPARED_TOOLS: tuple[str, ...] = ("onnx", "nncf")


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise unknown_choice("backend", name, list(BACKENDS))
    return BACKENDS[name]


def runtime_spec(name: str) -> str:
    """The ``"module:attr"`` of a runtime, for a child process that resolves it itself."""
    return backend(name).runtime


def get_runtime(name: str) -> Runtime:
    if name not in BACKENDS:
        raise unknown_choice("runtime", name, list(BACKENDS))
    return resolve(BACKENDS[name].runtime)()


def get_converter(runtime: str) -> Converter:
    converters = [n for n, b in BACKENDS.items() if b.converter]
    if runtime not in converters:
        raise unknown_choice("converter", runtime, converters)
    return resolve(BACKENDS[runtime].converter)()  # type: ignore[arg-type]


@functools.cache
def runnable_here(runtime: str, device: str) -> tuple[bool, str]:
    """Whether ``runtime`` is installed and sees ``device`` on this machine, with the reason when not.

    Cached per process: a run asks once per runtime and device, and says each reason once.
    """
    try:
        rt = get_runtime(runtime)
        return rt.device_available(device)
    except Exception as exc:  # noqa: BLE001 - a probe must never stop a run; it only says "not here"
        return False, f"{runtime} could not be checked: {type(exc).__name__}: {exc}"


def profile_runnable(profile: DeviceProfile) -> tuple[bool, str]:
    """``runnable_here`` for a device profile (``core.profiles.choose_profiles`` takes this)."""
    return runnable_here(profile.runtime, profile.device)


def package_versions() -> dict[str, tuple[str, ...]]:
    """Every distribution whose version results record, keyed by the name reports show (backends in table
    order, the exporter and the quantizer beside them)."""
    out: dict[str, tuple[str, ...]] = {"torch": ("torch",), "onnx": ("onnx",)}
    for b in BACKENDS.values():
        if b.distributions and b.name not in out and b.distributions != ("torch",):
            out[b.name] = b.distributions
            if b.name == "openvino":
                out["nncf"] = ("nncf",)
    out.update({k: v for k, v in TOOL_DISTRIBUTIONS.items() if k not in out})
    return out


def compared_packages() -> tuple[str, ...]:
    """Packages whose differing versions across merged results deserve a warning (always present ones)."""
    names = [b.name for b in BACKENDS.values() if b.compared_versions]
    return tuple(dict.fromkeys(["torch", *COMPARED_TOOLS[:1], *names, *COMPARED_TOOLS[1:]]))


def colour(runtime: str) -> str:
    b = BACKENDS.get(runtime)
    return b.colour if b else "#7f7f7f"


def code_formats() -> frozenset[Format]:
    """Formats whose loading can execute code from the file: loaded only when trusted."""
    return frozenset(f for b in BACKENDS.values() for f in b.code_formats)


def machine_check(fmt: Format) -> Callable[..., str | None] | None:
    """``(artifact path, device) -> why not | None`` for a format tied to the machine that built it (read from
    its sidecar, never by loading the artifact); ``None`` for portable formats."""
    for b in BACKENDS.values():
        if fmt in b.formats and b.machine_check:
            return resolve(b.machine_check)
    return None


def backend_for_format(fmt: Format) -> Backend:
    for b in BACKENDS.values():
        if fmt in b.formats:
            return b
    raise unknown_choice("format", str(fmt), [str(f) for b in BACKENDS.values() for f in b.formats])


# Kept for callers that index by runtime name (bench children resolve the string themselves).
RUNTIMES: dict[str, str] = {n: b.runtime for n, b in BACKENDS.items()}
CONVERTERS: dict[str, str] = {n: b.converter for n, b in BACKENDS.items() if b.converter}

__all__ = [
    "BACKENDS",
    "Backend",
    "CONVERTERS",
    "RUNTIMES",
    "backend",
    "backend_for_format",
    "code_formats",
    "colour",
    "compared_packages",
    "get_converter",
    "get_runtime",
    "package_versions",
    "profile_runnable",
    "runnable_here",
    "runtime_spec",
    "machine_check",
]
