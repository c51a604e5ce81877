"""ONNX → ONNX for ONNX Runtime's CPU provider: offline graph optimisation (FP32) or static INT8 quantisation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from modelport.backends.base import Converter, package_availability
from modelport.backends.lowering import (
    CALIBRATE_METHODS,
    COMMON_KEYS,
    ONNXRUNTIME_KEYS,
    QUANT_FORMATS,
    QUANTIZED_OPS,
    Lowering,
    LoweringOptions,
    has_attention,
    ignored_node_names,
    plan_lowering,
    quantized_ops,
    refuse_requantize,
    resolve_options,
    take_samples,
    target_cpu,
)
from modelport.core.files import atomic_path, sha256_file
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision, Status
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError
from modelport.export.onnx import (
    check_onnx,
    conform_feeds,
    read_specs,
    rebatch,
    temp_dir_in,
    tool_versions,
)

if TYPE_CHECKING:
    import onnx

INT8_FORMATS = QUANT_FORMATS  # the names of the settings' values live in backends.lowering
CALIBRATION_METHODS = CALIBRATE_METHODS
KEYS = COMMON_KEYS | ONNXRUNTIME_KEYS


class OnnxRuntimeConverter(Converter):
    """The validated ONNX export, optimised or quantised for ONNX Runtime on CPU (``model.onnx`` in ``out_dir``)."""

    name = "onnxruntime"
    source = Format.ONNX
    target = Format.ONNX

    def availability(self) -> tuple[bool, str]:
        return package_availability("onnxruntime", "pip install onnxruntime")

    def convert(
        self,
        artifact: Artifact,
        profile: DeviceProfile,
        precision: Precision,
        *,
        calibration: Feeds | None,
        out_dir: Path,
        options: Mapping[str, Any] | Lowering | None = None,
    ) -> Artifact:
        self.require_ready(artifact, "ONNX Runtime")
        plan = plan_lowering(options, precision, "onnxruntime", KEYS)
        if "max_drop" in plan.not_applicable:
            raise ConversionError(
                f"Step '{plan.step or 'quantize-accuracy'}' (accuracy-controlled quantization) is OpenVINO-only in "
                "modelport: it needs NNCF's accuracy restorer on the OpenVINO model.",
                fix="use an OpenVINO profile (e.g. intel-cpu) for quantize-accuracy, or the plain 'quantize' step "
                "for ONNX Runtime profiles.",
            )
        if precision is Precision.FP16:
            raise ConversionError(
                "FP16 is not offered for ONNX Runtime on CPU: its CPU provider has no FP16 kernels for most operators, "
                "so an FP16 model would run slower than FP32 through inserted casts.",
                fix="use fp32 or int8 for this profile, or an OpenVINO or TensorRT profile for fp16.",
            )
        if precision is Precision.BF16:
            from modelport.backends.bf16 import NO_BF16_KERNELS

            raise ConversionError(
                f"BF16 is not offered for ONNX Runtime on CPU: {NO_BF16_KERNELS['onnxruntime']}.",
                fix="use fp32 or int8 for this profile, or intel-cpu (OpenVINO) or cpu-aoti (AOTInductor) for bf16.",
            )
        out_dir = Path(out_dir)
        target = out_dir / "model.onnx"
        if target.resolve() == Path(artifact.path).resolve():
            raise ConversionError(
                f"Converting {artifact.path} into {out_dir} would overwrite the source model.",
                fix="give an output folder other than the source model's folder.",
            )
        prequantized = quantized_ops(Path(artifact.path))
        if prequantized:
            refuse_requantize(prequantized, precision, plan, "ONNX Runtime")
        opts = None
        if precision is Precision.INT8 and not prequantized:
            opts = resolve_options(plan, profile, keys=KEYS, has_attention=has_attention(Path(artifact.path)))
            if opts.calibrated and (calibration is None or len(calibration) == 0):
                raise ConversionError(
                    "INT8 quantisation for ONNX Runtime needs calibration data and none was given.",
                    fix="pass calibration data (CLI: --dataset with --calibration-size; Python: calibration_data=), "
                    "or use weight-only INT8 (--int8-mode weight-only), which needs none, or choose fp32.",
                )

        import onnxruntime as ort

        details: dict[str, Any] = {"static_batch": profile.static_batch}
        with temp_dir_in(out_dir, ".ort-convert-") as work:
            source = Path(artifact.path)
            if profile.static_batch:
                source = _static_batch_copy(source, work / "static.onnx", profile.static_batch)
            with atomic_path(target) as tmp:
                if precision is Precision.FP32:
                    _optimise(source, tmp)
                    details["optimization"] = "extended"
                elif precision is Precision.INT8 and prequantized:
                    # QAT export: the QuantizeLinear/DequantizeLinear pairs carry the scales; ORT fuses them at load
                    cpu = target_cpu(profile)
                    done = complete_qdq(source, work / "completed.onnx", target_vnni=cpu.vnni)
                    _optimise(work / "completed.onnx" if done.changed else source, tmp)
                    details.update({
                        "quantizer": "none: the ONNX model is quantized already",
                        "source_quantization": prequantized,
                        "qdq_completed": done.changed,
                        "target_cpu": cpu.source,
                        "optimization": "extended",
                    })
                    if done.skipped:
                        details["qdq_not_completed"] = done.skipped
                    if done.wide_weights and not cpu.vnni:
                        details["int8_warning"] = _wide_weights_warning(done.wide_weights)
                elif precision is Precision.INT8:
                    assert opts is not None  # resolved above for every non-prequantized INT8 lowering
                    details.update(_quantise(source, tmp, work, artifact, profile, calibration, opts))
                else:  # pragma: no cover - Precision has three members
                    raise ConversionError(f"Unknown precision {precision}.")
                # the file must pass the checker and load in ONNX Runtime before it replaces anything
                proto = check_onnx(tmp, infer_shapes=False)  # ORT contrib ops are unknown to ONNX shape inference
                try:
                    ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
                except Exception as exc:
                    raise ConversionError(
                        f"The {precision} model written for ONNX Runtime does not load: {exc}",
                        fix="report this with the model; try another int8_format or fp32.",
                    ) from exc

        if precision is Precision.INT8:
            details["quantized_ops"] = {
                op: n for op, n in sorted(Counter(node.op_type for node in proto.graph.node).items())
                if op in QUANTIZED_OPS or op.startswith("Q") or op.endswith("Integer")  # QLinearConv, QGemm…
            }
        if plan.record():
            details["lowering"] = plan.record()
        inputs, outputs = read_specs(proto)
        return Artifact(
            path=target,
            format=Format.ONNX,
            precision=precision,
            inputs=inputs,
            outputs=outputs,
            profile=profile.name,
            sha256=sha256_file(target),
            size_bytes=target.stat().st_size,
            files=(target.name,),
            parent_sha256=artifact.sha256 or None,
            recipe=artifact.recipe,
            preprocessing=artifact.preprocessing,
            tools={**artifact.tools, "onnxruntime": ort.__version__, **tool_versions("onnx")},
            status=Status.EXPORTED,
            details=details,
        )


    def int8_sensitivity(
        self,
        source: Artifact,
        int8: Artifact,
        profile: DeviceProfile,
        *,
        calibration: Feeds | None,
        probe: Feeds,
        options: Mapping[str, Any] | Lowering | None = None,
    ) -> dict[str, Any] | None:
        """Per-layer noise of a static INT8 artifact (``backends.onnxruntime.sensitivity``); None for the other
        kinds (dynamic, weight-only, a model quantized already), whose activations are not calibrated."""
        if int8.details.get("mode") != "static" or calibration is None or len(calibration) == 0:
            return None
        from modelport.backends.onnxruntime.sensitivity import int8_sensitivity

        plan = plan_lowering(options, Precision.INT8, "onnxruntime", KEYS)
        opts = resolve_options(plan, profile, keys=KEYS, has_attention=has_attention(Path(source.path)))
        feeds = conform_feeds(calibration, source.inputs)
        probe = conform_feeds(probe, source.inputs)
        if profile.static_batch:
            feeds, probe = rebatch(feeds, profile.static_batch), rebatch(probe, profile.static_batch)
        if opts.subset_size:
            feeds = take_samples(feeds, int(opts.subset_size))
        with temp_dir_in(Path(int8.path).parent, ".ort-sensitivity-") as work:
            model = Path(source.path)
            if profile.static_batch:
                model = _static_batch_copy(model, work / "static.onnx", profile.static_batch)
            prepare(model, work / "prepared.onnx")
            return int8_sensitivity(work / "prepared.onnx", None, opts, feeds, probe, work)


def _optimise(source: Path, dest: Path) -> None:
    """Save the model as ONNX Runtime optimises it at load time, so the device skips that work.

    ORT_ENABLE_EXTENDED, not ORT_ENABLE_ALL: the ALL level adds layout transformations (NCHWc) chosen for the
    CPU doing the conversion, and ONNX Runtime's documentation warns that a model saved with them may only run on
    compatible hardware. EXTENDED fusions (Conv+Activation, Gemm, attention…) are portable across x86/ARM CPUs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dest)
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(
            f"ONNX Runtime could not load and optimise {source}: {exc}",
            fix="check the model runs in ONNX Runtime (modelport validates the ONNX export first).",
        ) from exc


def _quantise(
    source: Path, dest: Path, work: Path, artifact: Artifact, profile: DeviceProfile, calibration: Feeds | None,
    opts: LoweringOptions,
) -> dict[str, Any]:
    """INT8 with ``onnxruntime.quantization``: pre-processing, then ``quantize_static`` (calibrated from
    ``calibration``) or ``quantize_dynamic`` (modes ``dynamic`` and ``weight-only``), with the resolved options."""
    prepared = work / "prepared.onnx"
    pre_process = prepare(source, prepared)
    exclude: list[str] = []
    if opts.ignored_scope:
        import onnx

        graph = onnx.load(str(prepared), load_external_data=False).graph
        exclude = ignored_node_names([(n.name, n.op_type) for n in graph.node], opts.ignored_scope)
    record: dict[str, Any] = {
        "quantizer": f"onnxruntime.quantization.quantize_{'static' if opts.calibrated else 'dynamic'}",
        "mode": opts.mode,
        "reduce_range": opts.reduce_range,
        "per_channel": opts.per_channel,
        "weight_type": opts.weight_type,
        "nodes_excluded": exclude,
        "pre_process": pre_process,
        "int8_options": opts.record(KEYS),
    }
    if not opts.calibrated:
        _quantise_dynamic(prepared, dest, opts, exclude)
        return {**record, "format": "qoperator (integer ops)", "activation_type": "uint8 (computed at run time)"}
    feeds = conform_feeds(cast(Feeds, calibration), artifact.inputs)
    if profile.static_batch:
        feeds = rebatch(feeds, profile.static_batch)
    if opts.subset_size:
        feeds = take_samples(feeds, int(opts.subset_size))
    quantize_static_file(prepared, dest, feeds, opts, exclude)
    return {
        **record,
        "format": opts.quant_format,
        "activation_type": opts.activation_type,
        "calibration_method": opts.calibrate_method,
        "calibration_samples": feeds.num_samples,
        "calibration_batches": len(feeds),
    }


def prepare(source: Path, prepared: Path) -> str:
    """ONNX Runtime's quantisation pre-processing (optimisation + shape inference); says which variant ran."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(prepared))
        return "optimised + symbolic shape inference"
    except Exception as first:  # symbolic shape inference rejects some graphs; plain ONNX inference still helps
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime's quantisation pre-processing failed: {exc} (with symbolic shapes: {first})",
                fix="simplify the model or choose fp32.",
            ) from exc
    return "optimised, without symbolic shape inference"


def quantize_static_file(
    prepared: Path, dest: Path, feeds: Feeds, opts: LoweringOptions, exclude: list[str], *, fmt: str | None = None
) -> None:
    """``quantize_static`` of ``prepared`` into ``dest`` (``fmt`` overrides the format: the sensitivity report
    quantizes a QDQ twin of a QOperator model to see its intermediate tensors)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    fmt = fmt or opts.quant_format
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[opts.calibrate_method]
    try:
        quantize_static(
            str(prepared),
            str(dest),
            feeds.ort_reader(),
            quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
            per_channel=opts.per_channel,
            reduce_range=opts.reduce_range,
            activation_type=_quant_type(opts.activation_type),
            weight_type=_quant_type(opts.weight_type),
            nodes_to_exclude=exclude or None,
            calibrate_method=method,
        )
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"ONNX Runtime INT8 quantisation ({fmt}, {opts.calibrate_method}) failed: {exc}",
            fix="check the calibration data matches the model's inputs, or try another int8_format.",
        ) from exc


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def _quantise_dynamic(prepared: Path, dest: Path, opts: LoweringOptions, exclude: list[str]) -> None:
    """``quantize_dynamic``: INT8 weights written ahead of time, activations quantized per batch at run time."""
    from onnxruntime.quantization import quantize_dynamic

    try:
        quantize_dynamic(
            str(prepared), str(dest), per_channel=opts.per_channel, reduce_range=opts.reduce_range,
            weight_type=_quant_type(opts.weight_type), nodes_to_exclude=exclude or None,
        )
    except Exception as exc:
        raise ConversionError(
            f"ONNX Runtime {opts.mode} INT8 quantisation failed: {exc}",
            fix="use mode = 'static' (dynamic quantisation suits MatMul/LSTM/attention models).",
        ) from exc
    if not quantized_ops(dest):
        raise ConversionError(
            f"ONNX Runtime {opts.mode} quantisation found nothing to quantise in this model (it takes Conv, MatMul, "
            "Attention and LSTM; Gemm layers stay FP32).",
            fix="use mode = 'static' for this model.",
        )


def _constant(name: str, inits: dict[str, Any], producers: dict[str, Any], numpy_helper: Any) -> Any:
    """The value of an initializer or Constant node output, else None."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        tensor = next((a.t for a in node.attribute if a.name == "value"), None)
        return None if tensor is None else numpy_helper.to_array(tensor)
    return None


def _quantized_weight(name: str, inits: dict[str, Any], producers: dict[str, Any], numpy_helper: Any) -> Any:
    """The integer weight a DequantizeLinear reads: a constant, or (NNCF's QAT export) a QuantizeLinear of a float
    constant, computed here as ONNX defines it (round half to even, saturate to the type's range)."""
    import numpy as np

    value = _constant(name, inits, producers, numpy_helper)
    if value is not None:
        return value
    q = producers.get(name)
    if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3:
        return None
    w, scale, zero = (_constant(i, inits, producers, numpy_helper) for i in q.input[:3])
    if w is None or scale is None or zero is None or zero.dtype not in (np.int8, np.uint8):
        return None
    axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and w.ndim > 1:
        shape = [1] * w.ndim
        shape[axis % w.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    info = np.iinfo(zero.dtype)
    return np.clip(np.rint(w / scale) + zero.astype(np.int32), info.min, info.max).astype(zero.dtype)


def _wide_weights_warning(layers: list[str]) -> str:
    return (
        f"{len(layers)} layer(s) have 8-bit weights ({', '.join(layers[:4])}{'…' if len(layers) > 4 else ''}): on "
        "CPUs without VNNI ONNX Runtime's u8s8 kernels can saturate on them (wrong results); quantize with 7-bit "
        "weights (qat step overflow_fix = 'enable') for this profile"
    )


# Operators that only move or select values: a quantized tensor stays on its quantization grid through them.
_GRID_PRESERVING = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})


class Completion(NamedTuple):
    """What ``complete_qdq`` did: layers given a Q/DQ pair, layers left alone (with why), and the layers whose INT8
    weights use all 8 bits (which u8×s8 kernels without VNNI can saturate on)."""

    changed: list[str]
    skipped: dict[str, str]
    wide_weights: list[str]


# |w| ≤ 64: two u8×s8 products sum to at most 2·255·64 = 32640, inside vpmaddubsw's int16 (32767) on CPUs without VNNI
SAFE_WEIGHT_MAGNITUDE = 64


def complete_qdq(source: Path, dest: Path, *, target_vnni: bool | None = None) -> Completion:
    """Give each Conv/Gemm/MatMul whose weight is dequantized, but whose input reaches it from a DequantizeLinear
    only through MaxPool/Flatten/Reshape-like operators, its own QuantizeLinear/DequantizeLinear pair with the same
    scale; writes ``dest`` when something changed.

    Why: NNCF's QAT export places activation quantizers before pooling and flattening (right for OpenVINO, which
    propagates them), and ONNX Runtime then runs such a layer in FP32. The pair is lossless in the graph: those
    operators keep values on the grid, so quantizing again with the same scale and zero point returns them unchanged.

    But the pair makes ONNX Runtime run the layer with integer kernels, and on a CPU without VNNI its u8×s8 kernels
    add pairs of products in 16 bits and saturate when weights use all 8 bits. So for such a target
    (``target_vnni=False``; ``None``: this machine's CPU) a layer is completed only when every INT8 weight has
    ``|w| ≤ 64``; the others stay FP32 (exact) and are listed in ``skipped``.
    """
    import onnx
    from onnx import helper, numpy_helper

    if target_vnni is None:
        from modelport.core.cpu import cpu_info

        target_vnni = cpu_info().vnni
    proto = onnx.load(str(source))
    nodes = list(proto.graph.node)
    producers = {out: n for n in nodes for out in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    changed: list[str] = []
    skipped: dict[str, str] = {}
    wide: list[str] = []
    for node in list(nodes):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = producers.get(node.input[1])
        if weight is None or weight.op_type != "DequantizeLinear":
            continue
        label = node.name or node.input[0]
        magnitude = _weight_magnitude(weight, inits, producers, numpy_helper)
        if magnitude is not None and magnitude > SAFE_WEIGHT_MAGNITUDE:
            wide.append(label)
        first = producers.get(node.input[0])
        if first is None or first.op_type == "DequantizeLinear":
            continue
        cur: Any = first
        while cur is not None and cur.op_type in _GRID_PRESERVING:
            cur = producers.get(cur.input[0])
        if cur is None or cur.op_type != "DequantizeLinear":
            continue
        if not target_vnni and (magnitude is None or magnitude > SAFE_WEIGHT_MAGNITUDE):
            skipped[label] = (
                f"INT8 weights up to |{magnitude}| would saturate ONNX Runtime's u8s8 kernels on a CPU without VNNI"
                if magnitude is not None else "its INT8 weights could not be read to rule out u8s8 saturation"
            )
            continue
        value = node.input[0]
        tag = f"{label}/completed"
        axis = [a for a in cur.attribute if a.name == "axis"]
        q = helper.make_node("QuantizeLinear", [value, *cur.input[1:]], [f"{tag}_q"], name=f"{tag}_q")
        dq = helper.make_node("DequantizeLinear", [f"{tag}_q", *cur.input[1:]], [f"{tag}_dq"], name=f"{tag}_dq")
        q.attribute.extend(axis)
        dq.attribute.extend(axis)
        node.input[0] = f"{tag}_dq"
        at = nodes.index(node)
        nodes[at:at] = [q, dq]
        changed.append(label)
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        onnx.save(proto, str(dest))
    return Completion(changed, skipped, wide)


def _weight_magnitude(dq: Any, inits: dict[str, Any], producers: dict[str, Any], numpy_helper: Any) -> int | None:
    """Largest |w| of the signed INT8 weight a DequantizeLinear reads (0 for uint8 weights: the u8×u8 kernels do
    not saturate); None when the weight is not a readable initializer."""
    import numpy as np

    w = _quantized_weight(dq.input[0], inits, producers, numpy_helper)
    if w is None:
        return None
    if w.dtype == np.uint8:
        return 0
    if w.dtype != np.int8 or w.size == 0:
        return None
    return int(np.abs(w.astype(np.int16)).max())


def _static_batch_copy(source: Path, dest: Path, batch: int) -> Path:
    """A copy of the model with the batch dimension (axis 0 of every input and output) fixed to ``batch``."""
    import onnx

    proto = onnx.load(str(source))
    fix_batch_dim(proto, batch)
    onnx.save(proto, str(dest))
    return dest


def fix_batch_dim(proto: "onnx.ModelProto", batch: int) -> None:
    """Set axis 0 of every graph input and output to ``batch``; refuse a fixed batch of another size."""
    inits = {t.name for t in proto.graph.initializer}
    values = [v for v in proto.graph.input if v.name not in inits] + list(proto.graph.output)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        d0 = dims[0]
        if d0.HasField("dim_value") and d0.dim_value > 0:
            if d0.dim_value != batch:
                raise ConversionError(
                    f"'{value.name}' has a fixed batch of {d0.dim_value}; the profile wants batch {batch}.",
                    fix="export the model with a dynamic batch dimension.",
                )
            continue
        d0.Clear()
        d0.dim_value = batch
    del proto.graph.value_info[:]  # stale symbolic shapes; ONNX Runtime re-infers them


__all__ = [
    "CALIBRATION_METHODS",
    "INT8_FORMATS",
    "Completion",
    "OnnxRuntimeConverter",
    "complete_qdq",
    "fix_batch_dim",
    "prepare",
    "quantize_static_file",
]
