"""PyTorch → ExecuTorch program (``model.pte``) delegated to XNNPACK, for the ``edge-xnnpack`` profile.

ExecuTorch is PyTorch's on-device runtime (phones, embedded Linux, microcontrollers). A ``.pte`` is a FlatBuffer
program: the operator graph, the weights, and "delegate blobs" that a backend compiled ahead of time; here the
XNNPACK backend takes the convolutions, linears and activations it supports and any operator it does not stays on
ExecuTorch's portable kernels. Like AOTInductor it lowers from the PyTorch reference, not from ONNX, so
``Converter.source`` is PYTORCH:

    torch.export (batch axis dynamic in [1, max_batch])
      [INT8: prepare_pt2e(XNNPACKQuantizer) → calibrate on the calibration feeds → convert_pt2e → torch.export]
    → to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()]) → to_executorch() → model.pte

INT8 is PT2E static quantization with the XNNPACK quantizer's symmetric config (int8 activations per tensor,
int8 weights per output channel unless ``per_channel = false``), calibrated on the calibration feeds.

A ``.pte`` carries no native code and no pickle: the runtime parses and verifies the FlatBuffer and runs kernels
compiled into the runtime, so the format is not a code format. What it is tied to is the ExecuTorch runtime that
reads it (the operators and delegates it was lowered to must be linked into that runtime); the versions that built
it are recorded in the artifact's ``tools``. Memory is planned ahead of time for the largest batch (``max_batch``),
which is the upper bound the runtime enforces.

The ``executorch`` wheel links libtorch (its Python bindings need ``libtorch.so``) but declares no ``torch``
requirement, so pip cannot tell whether the installed pair matches: ``executorch_availability`` imports the
runtime and says what failed when it does not load.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.backends.base import Converter
from modelport.backends.lowering import plan_lowering, take_samples
from modelport.core.files import atomic_path, sha256_file
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError, RuntimeUnavailableError

if TYPE_CHECKING:
    import torch

PROGRAM_NAME = "model.pte"
METHOD_NAME = "forward"
# Memory is planned ahead of time for the largest batch. Only tensors between delegated subgraphs (and those of
# operators left on portable kernels) are planned; XNNPACK sizes its own workspace for the batch it is given. 256
# covers bench's batch sizes and evaluation batch (64) as for AOTInductor.
DEFAULT_MAX_BATCH = 256
# FP32 self check: odd and ≠ the export example's 2 (a batch specialised by mistake shows), and one past 16, the
# batch threshold of the convolution heuristic that once narrowed the planned range (see _batch_range_kept).
SELF_CHECK_BATCHES = (3, 17)
SELF_CHECK_INT8_SAMPLES = 32  # calibration samples the INT8 program is run on, in one batch
# no brackets: the CLI prints availability reasons through rich, which would eat "[executorch]" as markup
INSTALL = "pip install executorch, the release built for this torch (modelport's 'executorch' extra pins it)"
# Lowering settings (modelport.backends.lowering) this converter reads. The others are for ONNX Runtime or
# OpenVINO and are recorded as not applicable.
APPLICABLE_SETTINGS = frozenset({"subset_size", "per_channel", "mode", "ignored_scope", "max_drop"})


# ----------------------------------------------------------------------------------------------- environment


def _version(dist: str) -> str | None:
    from modelport.core.versions import installed_version

    return installed_version(dist)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def executorch_availability(*, lower: bool = False, quantize: bool = False) -> tuple[bool, str]:
    """Can ``.pte`` programs be run here (and, with ``lower``/``quantize``, built)? Never raises.

    Imports the runtime for real: the wheel's native bindings link libtorch, so an ExecuTorch built for another
    PyTorch release fails here (undefined symbol) rather than in the middle of a conversion."""
    if importlib.util.find_spec("executorch") is None:
        return False, f"executorch is not installed: {INSTALL}"
    et_version = _version("executorch") or "unknown"
    torch_version = _version("torch") or "unknown"
    try:
        from executorch.runtime import Runtime

        runtime = Runtime.get()
    except Exception as exc:
        return False, (
            f"executorch {et_version} is installed but its runtime does not load with torch {torch_version}: "
            f"{type(exc).__name__}: {_first_line(exc)}. Fix: {INSTALL}"
        )
    try:
        has_xnnpack = bool(runtime.backend_registry.is_available("XnnpackBackend"))
    except Exception as exc:
        return False, f"executorch {et_version} cannot list its backends: {type(exc).__name__}: {_first_line(exc)}"
    if not has_xnnpack:
        return False, f"this executorch {et_version} runtime has no XNNPACK backend linked in. Fix: {INSTALL}"
    if lower or quantize:
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner,
            )
            from executorch.exir import to_edge_transform_and_lower
        except Exception as exc:
            return False, (
                f"executorch {et_version} runs here but cannot lower models with torch {torch_version}: "
                f"{type(exc).__name__}: {_first_line(exc)}. Fix: {INSTALL}"
            )
    if quantize:
        try:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
            )
            from torchao.quantization.pt2e.quantize_pt2e import (
                convert_pt2e,
                prepare_pt2e,
            )
        except Exception as exc:
            return False, (
                f"INT8 for ExecuTorch needs the XNNPACK quantizer and torchao's PT2E flow, which do not import: "
                f"{type(exc).__name__}: {_first_line(exc)}. Fix: {INSTALL}"
            )
    return True, f"executorch {et_version} (XNNPACK) with torch {torch_version}"


def tool_versions(*, quantized: bool) -> dict[str, str]:
    """Versions recorded in ``Artifact.tools``: the lowering stack that built the program."""
    import torch

    names = ("executorch", "torchao") if quantized else ("executorch",)
    return {"torch": str(torch.__version__), **{n: v for n in names if (v := _version(n))}}


# ------------------------------------------------------------------------------------------------- the model


def reference_module(artifact: Artifact) -> "torch.nn.Module":
    """The FP32 module behind a PYTORCH artifact (registered in-process, or rebuilt from arch + safetensors):
    the same lookup as the eager runtime, so the program is lowered from exactly the module the reference rows
    measure."""
    from modelport.backends.torch.runtime import module_for

    return module_for(artifact)


def _random_examples(inputs: tuple[TensorSpec, ...], batch: int, *, random: bool) -> dict[str, "torch.Tensor"]:
    import torch

    gen = torch.Generator().manual_seed(0)
    out = {}
    for spec in inputs:
        dtype = getattr(torch, spec.dtype)
        shape = spec.concrete_shape(batch)
        if random and dtype.is_floating_point:
            out[spec.name] = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        else:
            out[spec.name] = torch.zeros(shape, dtype=dtype)
    return out


def _feed_tensors(inputs: tuple[TensorSpec, ...], feed: Mapping[str, np.ndarray]) -> dict[str, "torch.Tensor"]:
    """A calibration/validation feed as tensors under the artifact's input names (by name, else by position)."""
    import torch

    names = [s.name for s in inputs]
    values = [feed[n] for n in names] if all(n in feed for n in names) else list(feed.values())
    if len(values) != len(names):
        raise ConversionError(
            f"A calibration batch has {len(values)} input(s); the model takes {len(names)}: {', '.join(names)}.",
            fix="give one array per model input.",
        )
    return {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in zip(names, values, strict=True)}


def _call(fn: Any, examples: Mapping[str, "torch.Tensor"]) -> Any:
    """One input positionally, several by name: the convention of the reference and of the ONNX export."""
    if len(examples) == 1:
        return fn(next(iter(examples.values())))
    return fn(**examples)


def _flat(out: Any) -> list[np.ndarray]:
    from torch.utils._pytree import tree_leaves

    return [t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy() for t in tree_leaves(out)]


def _export(module: "torch.nn.Module", inputs: tuple[TensorSpec, ...], max_batch: int) -> Any:
    """``torch.export`` with the batch axis of every input dynamic in ``[1, max_batch]``."""
    import torch

    examples = _random_examples(inputs, 2, random=False)  # batch 2: an example batch of 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        if len(examples) == 1:
            return torch.export.export(module, (next(iter(examples.values())),), dynamic_shapes=({0: batch},))
        return torch.export.export(module, (), kwargs=examples, dynamic_shapes={k: {0: batch} for k in examples})
    except Exception as exc:
        raise ConversionError(
            f"torch.export could not capture the model for ExecuTorch: {type(exc).__name__}: {_first_line(exc)}",
            fix="make the model exportable (torch.export: no data-dependent Python control flow), or use an "
            "ONNX-based profile.",
        ) from exc


def _input_order(program: Any, inputs: tuple[TensorSpec, ...]) -> list[str]:
    """The artifact's input names in the order the lowered program takes them (its user inputs)."""
    names = [s.name for s in inputs]
    if len(names) < 2:
        return names
    try:
        user = [str(n) for n in program.graph_signature.user_inputs]
    except Exception:
        return names
    return user if sorted(user) == sorted(names) else names


def _quantize(
    module: "torch.nn.Module",
    inputs: tuple[TensorSpec, ...],
    max_batch: int,
    calibration: Feeds,
    per_channel: bool,
) -> tuple[Any, dict[str, Any]]:
    """PT2E static INT8 with the XNNPACK quantizer; returns the re-exported quantized program and what was done."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    captured = _export(module, inputs, max_batch).module()
    try:
        prepared = prepare_pt2e(captured, quantizer)
        samples = 0
        with torch.no_grad():
            for feed in calibration:
                tensors = _feed_tensors(inputs, feed)
                _call(prepared, tensors)
                samples += len(next(iter(tensors.values())))
        converted = convert_pt2e(prepared)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"PT2E quantization with the XNNPACK quantizer failed: {type(exc).__name__}: {_first_line(exc)}",
            fix="use precision fp32 for edge-xnnpack, or an ONNX-based profile for INT8.",
        ) from exc
    record = {
        "method": "pt2e-static",
        "quantizer": "XNNPACKQuantizer",
        "config": "symmetric",
        "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
        "activations": "int8 per-tensor",
        "calibration_samples": samples,
    }
    return _export(converted, inputs, max_batch), record


@contextlib.contextmanager
def _batch_range_kept(program: Any) -> Iterator[None]:
    """Keep the exported batch range ``[1, max_batch]`` through lowering and memory planning.

    ExecuTorch's passes re-run the graph on fake tensors, and torch 2.14's fake convolution asks ATen which CPU
    convolution backend it would pick (``_select_conv_backend``), a heuristic that compares the batch with 16. On
    the program's shape environment that comparison becomes a guard (``s0 < 16``), which narrows the batch range,
    and the memory planner then sizes every buffer for batch 15 (seen with simple-mnist: a 32-batch call fails
    with "Attempted to resize a bounded tensor"). The guard only chose the memory format of a fake tensor, which
    XNNPACK does not use, so guards are suppressed on that shape environment while lowering; the self check then
    runs the program at ``max_batch`` against PyTorch and the planned bound is compared with ``max_batch``."""
    env = None
    for node in program.graph_module.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        dims = getattr(val, "shape", ())
        sym = next((d for d in dims if hasattr(d, "node") and hasattr(d.node, "shape_env")), None)
        if sym is not None:
            env = sym.node.shape_env
            break
    with env.suppress_guards() if env is not None else contextlib.nullcontext():
        yield


def _planned_bytes(manager: Any) -> int | None:
    """Bytes of the memory-planned (non-constant) buffers of ``forward``: what the device allocates up front."""
    try:
        plans = manager.executorch_program.execution_plan
        plan = next((p for p in plans if p.name == METHOD_NAME), plans[0])
        return int(sum(plan.non_const_buffer_sizes))
    except Exception:
        return None


def delegation_summary(edge_program: Any) -> dict[str, Any]:
    """How much of the lowered graph XNNPACK took: delegate calls, and the operators left on portable kernels."""
    graph = edge_program.graph_module.graph
    delegated, left = 0, {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            delegated += 1
        elif name != "getitem":
            left[name] = left.get(name, 0) + 1
    return {"xnnpack_subgraphs": delegated, "portable_ops": dict(sorted(left.items()))}


# ------------------------------------------------------------------------------------------------- converter


class ExecuTorchConverter(Converter):
    """Export the reference with a dynamic batch, quantize it for INT8, lower it to XNNPACK, check the program."""

    name = "executorch"
    source = Format.PYTORCH
    target = Format.EXECUTORCH_PROGRAM

    def availability(self) -> tuple[bool, str]:
        return executorch_availability(lower=True)

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
                f"ExecuTorch lowers the PyTorch model, not a {artifact.format} artifact ({artifact.path}).",
                fix="convert from the PyTorch checkpoint or module (an .onnx input has no PyTorch model to lower).",
            )
        if precision is Precision.BF16:
            from modelport.backends.bf16 import NO_BF16_KERNELS

            raise ConversionError(
                f"BF16 is not offered for ExecuTorch: {NO_BF16_KERNELS['executorch']}.",
                fix="use fp32 or int8 for edge-xnnpack, or intel-cpu (OpenVINO) or cpu-aoti (AOTInductor) for bf16.",
            )
        if precision not in (Precision.FP32, Precision.INT8):
            raise ConversionError(
                f"modelport builds ExecuTorch XNNPACK programs at fp32 and int8, not {precision}.",
                fix="use precision fp32 or int8 for edge-xnnpack.",
            )
        quantized = precision is Precision.INT8
        ok, why = executorch_availability(lower=True, quantize=quantized)
        if not ok:
            raise RuntimeUnavailableError(f"Cannot build an ExecuTorch program: {why}.")
        max_batch = profile.options.get("max_batch", DEFAULT_MAX_BATCH)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 2:
            raise ConversionError(
                f"Profile '{profile.name}' sets max_batch = {max_batch!r}; the dynamic batch axis needs an integer ≥ 2.",
                fix="set max_batch to e.g. 256 in profiles.toml.",
            )
        plan = plan_lowering(options, precision, self.name, APPLICABLE_SETTINGS)
        settings = plan.settings if quantized else {}
        if settings.get("ignored_scope"):
            raise ConversionError(
                "ignored_scope names ONNX/OpenVINO nodes; the ExecuTorch converter quantizes the torch.export graph "
                "and cannot map those names onto it.",
                fix="drop ignored_scope for edge-xnnpack, or quantize for an ONNX-based profile.",
            )
        if "max_drop" in settings:
            raise ConversionError(
                "accuracy-controlled quantization (max_drop) is an OpenVINO/NNCF feature; the ExecuTorch converter "
                "quantizes with PT2E and has no accuracy control.",
                fix="use the 'quantize' step for edge-xnnpack, or quantize-accuracy with intel-cpu.",
            )
        if str(settings.get("mode", "static")).lower() != "static":
            raise ConversionError(
                f"quantization mode {settings['mode']!r}: the ExecuTorch converter builds static INT8 only.",
                fix="use mode 'static' (or leave it out) for edge-xnnpack.",
            )
        if quantized and (calibration is None or len(calibration) == 0):
            raise ConversionError(
                "INT8 for ExecuTorch needs calibration data (PT2E observes activation ranges on it).",
                fix="pass a dataset or calibration_data, or convert at fp32.",
            )

        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower

        module = reference_module(artifact)
        was_training = module.training
        module.eval()
        try:
            t0 = time.perf_counter()
            quant_record: dict[str, Any] | None = None
            with torch.no_grad():
                if quantized and calibration is not None:
                    subset = settings.get("subset_size")
                    feeds = take_samples(calibration, int(subset)) if subset else calibration
                    program, quant_record = _quantize(
                        module, artifact.inputs, max_batch, feeds, bool(settings.get("per_channel", True))
                    )
                else:
                    program = _export(module, artifact.inputs, max_batch)
            export_s = time.perf_counter() - t0
            order = _input_order(program, artifact.inputs)

            t0 = time.perf_counter()
            try:
                with _batch_range_kept(program):
                    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
                    delegation = delegation_summary(edge.exported_program())
                    manager = edge.to_executorch()
                    buffer = manager.buffer
                planned_bytes = _planned_bytes(manager)
            except Exception as exc:
                raise ConversionError(
                    f"ExecuTorch could not lower the exported model to XNNPACK: {type(exc).__name__}: "
                    f"{_first_line(exc)}",
                    fix="report it with the model; use an ONNX-based profile meanwhile.",
                ) from exc
            lower_s = time.perf_counter() - t0

            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / PROGRAM_NAME
            with atomic_path(path) as tmp:
                tmp.write_bytes(buffer)
                check = _self_check(
                    tmp, module, artifact, precision, order, calibration if quantized else None, max_batch
                )
        finally:
            module.train(was_training)

        details: dict[str, Any] = {
            "method": METHOD_NAME,
            "delegate": "XnnpackBackend",
            "delegation": delegation,
            "dynamic_shapes": {"batch": {"axis": 0, "min": 1, "max": max_batch}},
            "max_batch": max_batch,
            "planned_memory_bytes": planned_bytes,  # activations planned ahead of time, at max_batch
            "input_order": order,
            "export_seconds": round(export_s, 2),
            "lower_seconds": round(lower_s, 2),
            "self_check": check,
        }
        if quant_record:
            details["quantization"] = quant_record
        if plan.record():
            details["lowering"] = plan.record()
        return Artifact(
            path=path,
            format=Format.EXECUTORCH_PROGRAM,
            precision=precision,
            inputs=artifact.inputs,
            outputs=artifact.outputs,
            profile=profile.name,
            sha256=sha256_file(path),
            size_bytes=path.stat().st_size,
            files=(PROGRAM_NAME,),
            parent_sha256=artifact.sha256,
            preprocessing=artifact.preprocessing,
            tools=tool_versions(quantized=quantized),
            details=details,
        )


def _self_check(
    path: Path,
    model: "torch.nn.Module",
    artifact: Artifact,
    precision: Precision,
    order: list[str],
    calibration: Feeds | None,
    max_batch: int,
) -> dict[str, Any]:
    """Run the fresh program in the ExecuTorch runtime beside the FP32 module it came from.

    First the memory plan: every input's planned batch must be ``max_batch``. Then FP32: seeded random batches
    (``SELF_CHECK_BATCHES``), held to the FP32 rule (rtol 1e-3/atol 1e-5). INT8: up to 32 calibration samples in
    one batch (random data lies outside the calibrated ranges), refused only when the outputs are
    NaN/Inf or constant — the top-1 and accuracy rules are the pipeline's, on the validation set; the figures are
    recorded here."""
    import torch
    from executorch.runtime import Runtime, Verification

    from modelport.agreement import compare, judge

    if calibration is None:
        sizes = sorted({min(b, max_batch) for b in SELF_CHECK_BATCHES})
        batches = [_random_examples(artifact.inputs, b, random=True) for b in sizes]
    else:
        part = take_samples(calibration, min(SELF_CHECK_INT8_SAMPLES, max_batch))
        chunks = [_feed_tensors(artifact.inputs, feed) for feed in part]
        batches = [{k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}]
    try:
        program = Runtime.get().load_program(str(path), verification=Verification.InternalConsistency)
        meta = program.metadata(METHOD_NAME)
        planned = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
    except Exception as exc:
        raise ConversionError(
            f"The ExecuTorch runtime does not load the program it was just given: {type(exc).__name__}: "
            f"{_first_line(exc)}",
            fix="report it with the model; use an ONNX-based profile meanwhile.",
        ) from exc
    short = sorted({p[0] for p in planned if p and p[0] != max_batch})
    if short:
        raise ConversionError(
            f"ExecuTorch planned memory for batches up to {short[0]}, not the max_batch {max_batch} the program was "
            "exported with: a lowering pass narrowed the batch range.",
            fix=f"set max_batch = {short[0]} for this profile in profiles.toml, or report it with the model.",
        )
    want: list[np.ndarray] = []
    got: list[np.ndarray] = []
    try:
        method = program.load_method(METHOD_NAME)
        for examples in batches:
            out = method.execute([examples[n] for n in order])
            outs = [o.float().numpy() if o.is_floating_point() else o.numpy() for o in out]
            with torch.no_grad():
                ref = _flat(_call(model, examples))
            if len(outs) != len(ref):
                raise ConversionError(
                    f"The ExecuTorch program returns {len(outs)} outputs, the model {len(ref)}.",
                    fix="report it with the model.",
                )
            got.append(outs[0])
            want.append(ref[0])
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"The lowered ExecuTorch program does not run: {type(exc).__name__}: {_first_line(exc)}",
            fix="report it with the model; use an ONNX-based profile meanwhile.",
        ) from exc
    agreement = compare(want, got, classes=True)
    if precision is Precision.FP32:
        verdict = judge(precision, agreement)
    else:
        verdict = "outputs contain NaN/Inf" if not agreement.finite else "outputs are constant" if agreement.constant else None
    sizes = [len(next(iter(b.values()))) for b in batches]
    data = "random" if calibration is None else "calibration"
    if verdict:
        raise ConversionError(
            f"The ExecuTorch program {verdict} on {data} batches of {', '.join(map(str, sizes))}.",
            fix="report it with the model; use an ONNX-based profile meanwhile.",
        )
    return {**agreement.to_dict(), "batches": sizes, "data": data}


__all__ = [
    "DEFAULT_MAX_BATCH",
    "METHOD_NAME",
    "PROGRAM_NAME",
    "ExecuTorchConverter",
    "delegation_summary",
    "executorch_availability",
    "tool_versions",
]
