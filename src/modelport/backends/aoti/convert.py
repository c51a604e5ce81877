"""PyTorch → AOTInductor package (``model.pt2``) for the ``cpu-aoti`` and ``cuda-aoti`` profiles.

AOTInductor compiles a ``torch.export`` program ahead of time into a shared library (C++ for CPU, C++ plus
Triton/CUDA kernels for GPU) packed in a ``.pt2`` archive: a native deployment artifact that runs without the
model's Python code. It lowers from the PyTorch reference, not from ONNX, so ``Converter.source`` is PYTORCH.

A package is tied to what built it: the PyTorch version (the kernels call libtorch's C++ ABI), the device kind,
and for CPU the instruction set (Inductor picks a vector ISA such as AVX-512 and compiles with ``-march=native``
unless told otherwise), for CUDA the GPU's compute capability. PyTorch itself only *warns* on a mismatch, after the
library is already loaded. So every package gets a sidecar ``model.pt2.json`` with those facts, written here and
checked by the runtime before it loads anything (``check_sidecar``).

A ``.pt2`` contains native code: loading one executes it. Treat it like an executable; the sha256 checks guard
against corruption and mix-ups, not against someone who hands you a malicious folder.
"""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import platform
import re
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.backends.base import Converter
from modelport.core.files import atomic_path, atomic_write_json, sha256_file
from modelport.core.trust import record_produced
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision
from modelport.data.feeds import Feeds
from modelport.errors import ModelportError, ConversionError, RuntimeUnavailableError

if TYPE_CHECKING:
    import torch

PACKAGE_NAME = "model.pt2"
SIDECAR_NAME = "model.pt2.json"
SIDECAR_SCHEMA = "modelport.aoti-sidecar"
SIDECAR_VERSION = 1
DEFAULT_MAX_BATCH = 256
SELF_CHECK_BATCH = 3  # odd and ≠ the export example's 2, so a batch specialised by mistake shows


# ----------------------------------------------------------------------------------------------- environment


def device_kind(device: str) -> str:
    """``"CPU"`` → ``"cpu"``; ``"cuda"``, ``"CUDA:1"``, ``"gpu"`` → ``"cuda"``."""
    return "cuda" if re.match(r"(?i)(cuda|gpu)", str(device).strip()) else "cpu"


def device_index(device: str) -> int:
    m = re.fullmatch(r"(?i)(?:cuda|gpu)(?::(\d+))?", str(device).strip())
    return int(m.group(1) or 0) if m else 0


def _cxx_compiler() -> str | None:
    """The C++ compiler Inductor would call (``CXX`` or its default), if one is on PATH."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 - Inductor raises when it finds none; availability never raises
        return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def aoti_availability(device: str = "CPU", *, compile: bool = False) -> tuple[bool, str]:
    """Can packages for ``device`` be loaded (and, with ``compile``, built) here? Never raises."""
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed: pip install torch"
    try:
        import torch
        import torch._inductor as inductor
    except Exception as exc:  # noqa: BLE001
        return False, f"'import torch._inductor' failed: {type(exc).__name__}: {exc}"
    if not hasattr(inductor, "aoti_compile_and_package") or not hasattr(inductor, "aoti_load_package"):
        return False, f"torch {torch.__version__} has no AOTInductor packaging API; it needs torch ≥ 2.6: pip install -U torch"
    notes = [f"torch {torch.__version__}"]
    if compile:
        cxx = _cxx_compiler()
        if cxx is None:
            return False, "AOTInductor needs a C++ compiler to build packages and none is on PATH: install g++ (or set CXX)"
        notes.append(f"C++ compiler {cxx}")
    if device_kind(device) == "cuda":
        if torch.version.cuda is None:
            return False, f"torch {torch.__version__} is a CPU-only build, so no CUDA package can be built or run: install a CUDA build of torch"
        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible (torch.cuda.is_available() is False): run on a machine with an NVIDIA GPU"
        index = device_index(device)
        if index >= torch.cuda.device_count():
            return False, f"device cuda:{index} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
        notes.append(f"CUDA {torch.version.cuda} on {torch.cuda.get_device_name(index)}")
    return True, "; ".join(notes)


def _cpu_flags(path: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """(CPU model name, sorted feature flags) of the hardware (core.cpu); empty where they cannot be read."""
    from modelport.core.cpu import cpu_info

    hw = cpu_info(path, override=False)
    return hw.model, sorted(hw.flags)


def current_environment(device: str = "CPU") -> dict[str, Any]:
    """The facts a package built now for ``device`` is tied to (and that the runtime compares)."""
    import torch

    kind = device_kind(device)
    env: dict[str, Any] = {
        "torch_version": str(torch.__version__),
        "device": kind,
        "platform": sys.platform,
        "machine": platform.machine(),
    }
    if kind == "cpu":
        from torch._inductor import config as inductor_config
        from torch._inductor.cpu_vec_isa import pick_vec_isa, valid_vec_isa_list

        model, flags = _cpu_flags()
        env.update(
            cpu_isa=str(pick_vec_isa()).lower(),
            cpu_isas_supported=[str(i).lower() for i in valid_vec_isa_list()],
            cpu_model=model,
            cpu_flags=flags,
            march=inductor_config.cpp.march or "native",
        )
    else:
        index = device_index(device)
        major, minor = torch.cuda.get_device_capability(index)
        env.update(
            gpu_name=torch.cuda.get_device_name(index),
            compute_capability=f"{major}.{minor}",
            cuda_version=str(torch.version.cuda),
        )
    return env


def _public_version(version: str) -> str:
    """``2.14.1+cu130`` → ``2.14.1``: the C++ ABI is the release's; the local build tag is the CUDA flavour."""
    return str(version).split("+", 1)[0].strip()


def check_sidecar(sidecar: Any, present: dict[str, Any]) -> str | None:
    """Why a package described by ``sidecar`` cannot run on the machine described by ``present``, or ``None``.

    ``present`` comes from ``current_environment`` for the device asked. Checked: schema, PyTorch release,
    device kind, OS and machine; for CPU that the package's vector ISA is one this CPU runs and, for a
    ``-march=native`` build, that this CPU has every feature flag of the one that built it; for CUDA the compute
    capability.
    """
    rebuild = "rebuild the package on this machine with 'modelport convert --profiles <cpu-aoti|cuda-aoti>'"
    if not isinstance(sidecar, dict):
        return f"the package sidecar is not a JSON object, so the package cannot be matched to this machine: {rebuild}"
    if sidecar.get("schema") != SIDECAR_SCHEMA:
        return f"the sidecar's schema is {sidecar.get('schema')!r}, not {SIDECAR_SCHEMA!r}: {rebuild}"
    need = ["torch_version", "device", "platform", "machine"]
    need += ["cpu_isa"] if sidecar.get("device") == "cpu" else ["compute_capability"]
    missing = [k for k in need if not str(sidecar.get(k) or "").strip()]
    if missing:
        return f"the package sidecar lacks {', '.join(missing)}, so it cannot be matched to this machine: {rebuild}"
    built, here = _public_version(sidecar["torch_version"]), _public_version(present.get("torch_version", ""))
    if built != here:
        return (
            f"package compiled with torch {sidecar['torch_version']}, this machine has torch "
            f"{present.get('torch_version')}; AOTInductor packages only load in the PyTorch release that built them: "
            f"{rebuild}, or install torch=={built}"
        )
    if sidecar["device"] != present.get("device"):
        return f"package compiled for {sidecar['device']}, asked to run on {present.get('device')}: {rebuild}"
    for key in ("platform", "machine"):
        if str(sidecar[key]) != str(present.get(key)):
            return f"package compiled for {key} {sidecar[key]}, this machine is {present.get(key)}: {rebuild}"
    if sidecar["device"] == "cpu":
        isa = str(sidecar["cpu_isa"]).lower()
        supported = [str(i).lower() for i in present.get("cpu_isas_supported") or []]
        if isa not in supported:
            return (
                f"package compiled for the {isa.upper()} instruction set, this CPU supports "
                f"{', '.join(supported) or 'none of the vector ISAs Inductor compiles for'}: {rebuild}"
            )
        if str(sidecar.get("march") or "native") == "native" and sidecar.get("cpu_flags") and present.get("cpu_flags"):
            lacking = sorted(set(sidecar["cpu_flags"]) - set(present["cpu_flags"]))
            if lacking:
                return (
                    f"package compiled with -march=native on {sidecar.get('cpu_model') or 'another CPU'}, whose "
                    f"features this CPU lacks ({', '.join(lacking[:8])}{' …' if len(lacking) > 8 else ''}); it "
                    f"could crash with an illegal instruction: {rebuild}"
                )
        return None
    if str(sidecar["compute_capability"]) != str(present.get("compute_capability")):
        return (
            f"package compiled for {sidecar.get('gpu_name')} (compute {sidecar['compute_capability']}), this GPU is "
            f"{present.get('gpu_name')} (compute {present.get('compute_capability')}): {rebuild}"
        )
    return None


def sidecar_path(package: Path) -> Path:
    from modelport.backends.sidecar import sidecar_path as _path

    return _path(package)


def read_sidecar(package: Path) -> dict[str, Any]:
    """The sidecar of ``package``; ``RuntimeUnavailableError`` when missing, oversized or not a JSON object."""
    from modelport.backends.sidecar import read_sidecar_json

    return read_sidecar_json(
        package,
        what="AOTInductor package",
        missing_means="so nothing says which PyTorch and device built it; modelport does not load such packages "
        "(loading runs the native code inside)",
        fix="convert again with 'modelport convert' (it writes the sidecar beside the package).",
    )


def machine_problem(package: Path, device: str = "CPU") -> str | None:
    """Why the package cannot run on ``device`` of this machine (its sidecar against this PyTorch, device and
    CPU), or ``None``. Reads nothing but the sidecar: the package's library is never loaded."""
    try:
        sidecar = read_sidecar(package)
    except ModelportError as exc:
        return exc.message
    ok, why = aoti_availability(device)
    if not ok:
        return why
    return check_sidecar(sidecar, current_environment(device))


# ------------------------------------------------------------------------------------------------- the model


def reference_module(artifact: Artifact) -> "torch.nn.Module":
    """The FP32 module behind a PYTORCH artifact: the in-process module registered for its sha256 (Python API),
    else rebuilt from ``details['arch']`` + ``model_kwargs`` and the safetensors file. Same lookup as the eager
    runtime, so the package is compiled from exactly the module the reference rows measure."""
    from modelport.backends.torch.runtime import module_for

    return module_for(artifact)


_TORCH_DTYPE = {Precision.FP16: "float16", Precision.BF16: "bfloat16"}


def _half_wrapper(module: "torch.nn.Module", dtype: str = "float16") -> "torch.nn.Module":
    """FP16 or BF16 compute behind an FP32 interface: weights and inputs cast down, outputs cast up (as TensorRT
    FP16 engines do), so the feeds and the validation are those of every other artifact. On CPU, Inductor sends
    bf16 convolutions and matmuls to oneDNN, which uses AMX-BF16 or AVX512_BF16 where the CPU has them."""
    import torch
    from torch.utils._pytree import tree_map

    low = getattr(torch, dtype)

    class HalfModel(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.to(low)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            def down(t: Any) -> Any:
                return t.to(low) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

            def up(t: Any) -> Any:
                return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

            return tree_map(up, self.inner(*tree_map(down, args), **tree_map(down, kwargs)))

    return HalfModel(module).eval()


def _examples(artifact: Artifact, batch: int, torch_device: str, *, random: bool) -> dict[str, "torch.Tensor"]:
    import torch

    gen = torch.Generator().manual_seed(0)
    out = {}
    for spec in artifact.inputs:
        shape = spec.concrete_shape(batch)
        dtype = getattr(torch, spec.dtype)
        if random and dtype.is_floating_point:
            t = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        else:
            t = torch.zeros(shape, dtype=dtype)
        out[spec.name] = t.to(torch_device)
    return out


def _call(fn: Any, examples: dict[str, "torch.Tensor"]) -> Any:
    """One input positionally, several by name: the convention of the reference and of the ONNX export."""
    if len(examples) == 1:
        return fn(next(iter(examples.values())))
    return fn(**examples)


def flat_outputs(out: Any) -> list[np.ndarray]:
    """Tensor / tuple / list / dict of tensors → numpy arrays in pytree leaf order (dicts by insertion order)."""
    from torch.utils._pytree import tree_leaves

    return [t.detach().float().cpu().numpy() if t.dtype.is_floating_point else t.detach().cpu().numpy() for t in tree_leaves(out)]


def export_program(module: "torch.nn.Module", artifact: Artifact, max_batch: int, torch_device: str) -> Any:
    """``torch.export`` with the batch axis of every input dynamic in ``[1, max_batch]``."""
    import torch

    examples = _examples(artifact, 2, torch_device, random=False)  # batch 2: 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    # a forward(*args, **kwargs) (the fp16/bf16 wrapper) takes its dynamic shapes under those parameters' names
    kinds = {p.kind for p in inspect.signature(module.forward).parameters.values()}
    try:
        if len(examples) == 1:
            one: Any = ({0: batch},)
            shapes = {"args": one} if inspect.Parameter.VAR_POSITIONAL in kinds else one
            return torch.export.export(module, (next(iter(examples.values())),), dynamic_shapes=shapes)
        named = {name: {0: batch} for name in examples}
        return torch.export.export(
            module, (), kwargs=examples,
            dynamic_shapes={"kwargs": named} if inspect.Parameter.VAR_KEYWORD in kinds else named,
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConversionError(
            f"torch.export could not capture the model with a dynamic batch in [1, {max_batch}]: "
            f"{type(exc).__name__}: {first}",
            fix="make the forward free of Python control flow on tensor values and of batch-size-specific "
            "reshapes (use x.flatten(1), not x.view(2, -1)), or use an ONNX-based profile.",
        ) from exc


# ------------------------------------------------------------------------------------------------- converter


class AotiConverter(Converter):
    """Export the reference with a dynamic batch, compile it with AOTInductor, check the package, write the sidecar."""

    name = "aoti"
    source = Format.PYTORCH
    target = Format.AOTI_PACKAGE

    def availability(self) -> tuple[bool, str]:
        return aoti_availability("CPU", compile=True)

    def convert(
        self,
        artifact: Artifact,
        profile: DeviceProfile,
        precision: Precision,
        *,
        calibration: Feeds | None = None,
        out_dir: Path,
        options: Mapping[str, Any] | None = None,
    ) -> Artifact:
        if artifact.format is not Format.PYTORCH:
            raise ConversionError(
                f"AOTInductor compiles the PyTorch model, not a {artifact.format} artifact ({artifact.path}).",
                fix="convert from the PyTorch checkpoint or module (an .onnx input has no PyTorch model to compile).",
            )
        kind = device_kind(profile.device)
        ok, why = aoti_availability(profile.device, compile=True)
        if not ok:
            raise RuntimeUnavailableError(f"Cannot build an AOTInductor package for {profile.device}: {why}.")
        if (precision is Precision.INT8 or (precision is Precision.FP16 and kind == "cpu")
                or (precision is Precision.BF16 and kind == "cuda")):
            raise ConversionError(
                f"modelport builds AOTInductor packages at fp32, bf16 on CPU and fp16 on CUDA, not {precision} on "
                f"{kind}.",
                fix="use precision fp32 (or bf16 on a CPU with BF16 units) for cpu-aoti; INT8 on CPU is what "
                "intel-cpu/legacy-cpu are for.",
            )
        if precision is Precision.BF16:
            from modelport.backends.bf16 import require_bf16

            require_bf16(profile.name)
        max_batch = profile.options.get("max_batch", DEFAULT_MAX_BATCH)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 2:
            raise ConversionError(
                f"Profile '{profile.name}' sets max_batch = {max_batch!r}; the dynamic batch axis needs an integer ≥ 2.",
                fix="set max_batch to e.g. 256 in profiles.toml.",
            )
        import copy

        import torch

        torch_device = "cuda:%d" % device_index(profile.device) if kind == "cuda" else "cpu"
        module = reference_module(artifact)
        if kind == "cuda":
            module = copy.deepcopy(module)  # never move or cast the caller's registered module
        module = module.to(torch_device).eval()
        model = module
        if precision in (Precision.FP16, Precision.BF16):
            model = _half_wrapper(copy.deepcopy(module), _TORCH_DTYPE[precision])

        t0 = time.perf_counter()
        with torch.no_grad():
            program = export_program(model, artifact, max_batch, torch_device)
        export_s = time.perf_counter() - t0

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        package = out_dir / PACKAGE_NAME
        env = current_environment(profile.device)
        metadata = {"modelport.precision": str(precision), "modelport.max_batch": str(max_batch)}
        t0 = time.perf_counter()
        with atomic_path(package) as tmp:
            try:
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": metadata}
                )
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ConversionError(
                    f"AOTInductor could not compile the exported model for {kind}: {type(exc).__name__}: {first}",
                    fix="check the C++ compiler works (g++ --version) and there is free disk space in the output "
                    "folder and in the Inductor cache (TORCHINDUCTOR_CACHE_DIR); otherwise report it with the model.",
                ) from exc
            compile_s = time.perf_counter() - t0
            check = _self_check(tmp, module, artifact, precision, torch_device)
        sha = sha256_file(package)
        record_produced(package, Format.AOTI_PACKAGE, sha256=sha)  # compiled here: this machine may load it later
        sidecar = {
            "schema": SIDECAR_SCHEMA,
            "version": SIDECAR_VERSION,
            **env,
            "precision": str(precision),
            "dynamic_shapes": {"batch": {"axis": 0, "min": 1, "max": max_batch}},
            "inputs": [t.to_dict() for t in artifact.inputs],
            "outputs": [t.to_dict() for t in artifact.outputs],
            "package_sha256": sha,
            "parent_sha256": artifact.sha256,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(sidecar_path(package), sidecar)
        details = {
            "device": kind,
            "torch_version": env["torch_version"],
            "dynamic_shapes": sidecar["dynamic_shapes"],
            "max_batch": max_batch,
            "export_seconds": round(export_s, 2),
            "compile_seconds": round(compile_s, 2),
            "self_check": check,
            **({"compute_dtype": _TORCH_DTYPE[precision]} if precision in _TORCH_DTYPE else {}),
            **({"cpu_isa": env["cpu_isa"], "march": env["march"]} if kind == "cpu" else {}),
            **({"gpu_name": env["gpu_name"], "compute_capability": env["compute_capability"]} if kind == "cuda" else {}),
        }
        if options and options.get("quantization"):  # PTQ settings are for the ONNX-based runtimes
            details["lowering_options"] = "not applicable: AOTInductor packages are fp32/fp16, no quantization settings"
        return Artifact(
            path=package,
            format=Format.AOTI_PACKAGE,
            precision=precision,
            inputs=artifact.inputs,
            outputs=artifact.outputs,
            profile=profile.name,
            sha256=sha,
            size_bytes=package.stat().st_size,
            files=(PACKAGE_NAME, SIDECAR_NAME),
            parent_sha256=artifact.sha256,
            preprocessing=artifact.preprocessing,
            tools={"torch": env["torch_version"]},
            details=details,
        )


def _self_check(
    package: Path, model: "torch.nn.Module", artifact: Artifact, precision: Precision, torch_device: str
) -> dict[str, Any]:
    """Run the fresh package and the FP32 module it came from on one seeded random batch; refuse a package that
    disagrees beyond the precision's rule (``agreement.judge``: FP32, FP16 or BF16). The pipeline then
    validates on real data in the runtime; this catches a miscompile even in direct Python-API use."""
    import torch

    from modelport.agreement import compare, judge

    examples = _examples(artifact, SELF_CHECK_BATCH, torch_device, random=True)
    try:
        compiled = torch._inductor.aoti_load_package(str(package))
        with torch.inference_mode():
            got = flat_outputs(_call(compiled, examples))
            want = flat_outputs(_call(model, examples))
    except Exception as exc:
        raise ConversionError(
            f"The compiled AOTInductor package does not run: {type(exc).__name__}: {str(exc).strip()[:300]}",
            fix="report it with the model; use an ONNX-based profile meanwhile.",
        ) from exc
    if len(got) != len(want):
        raise ConversionError(
            f"The package returns {len(got)} outputs, the model {len(want)}.", fix="report it with the model."
        )
    agreement = compare([want[0]], [got[0]], classes=True)
    verdict = judge(precision, agreement)
    if verdict:
        raise ConversionError(
            f"The AOTInductor package {verdict} on a random batch of {SELF_CHECK_BATCH}.",
            fix="report it with the model; use an ONNX-based profile meanwhile.",
        )
    return {**agreement.to_dict(), "batch": SELF_CHECK_BATCH}


__all__ = [
    "PACKAGE_NAME",
    "SIDECAR_NAME",
    "AotiConverter",
    "aoti_availability",
    "check_sidecar",
    "current_environment",
    "device_kind",
    "read_sidecar",
    "sidecar_path",
]
