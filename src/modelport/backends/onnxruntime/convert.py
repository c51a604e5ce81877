"""ONNX → ONNX for ONNX Runtime's CPU provider: offline graph optimisation (FP32) or static INT8 quantisation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from modelport.backends.base import Converter, package_availability
from modelport.backends.lowering import (
    COMMON_KEYS,
    ONNXRUNTIME_KEYS,
    QUANTIZED_OPS,
    LoweringPlan,
    ignored_node_names,
    plan_lowering,
    quantized_ops,
    refuse_requantize,
    take_samples,
)
from modelport.export.onnx import (
    check_onnx,
    conform_feeds,
    read_specs,
    rebatch,
    temp_dir_in,
    tool_versions,
)
from modelport.core.files import atomic_path, sha256_file
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision, Status
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError, InputError

if TYPE_CHECKING:
    import onnx

INT8_FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


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
        options: Mapping[str, Any] | None = None,
    ) -> Artifact:
        self.require_ready(artifact, "ONNX Runtime")
        plan = plan_lowering(options, precision, "onnxruntime", COMMON_KEYS | ONNXRUNTIME_KEYS)
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
        dynamic = plan.settings.get("mode") == "dynamic"
        if (
            precision is Precision.INT8 and not prequantized and not dynamic
            and (calibration is None or len(calibration) == 0)
        ):
            raise ConversionError(
                "INT8 quantisation for ONNX Runtime needs calibration data and none was given.",
                fix="pass calibration feeds (for example 'modelport convert --calibration-samples 200' or "
                "Feeds.from_array(...) in the Python API), or choose fp32.",
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
                    completed = complete_qdq(source, work / "completed.onnx")
                    _optimise(work / "completed.onnx" if completed else source, tmp)
                    details.update({
                        "quantizer": "none: the ONNX model is quantized already",
                        "source_quantization": prequantized,
                        "qdq_completed": completed,
                        "optimization": "extended",
                    })
                elif precision is Precision.INT8:
                    details.update(_quantise(source, tmp, work, artifact, profile, calibration, plan))
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
    plan: LoweringPlan,
) -> dict[str, Any]:
    """INT8 with ``onnxruntime.quantization``: pre-processing, then ``quantize_static`` (calibrated from
    ``calibration``) or ``quantize_dynamic``; the step's settings first, then the profile's ``int8_*`` keys."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    s = plan.settings
    mode = str(s.get("mode", "static"))
    fmt = str(s.get("quant_format") or profile.options.get("int8_format", "qdq")).lower()
    if fmt not in INT8_FORMATS:
        raise InputError(
            f"Profile '{profile.name}' asks for int8_format '{fmt}'. Available: {', '.join(INT8_FORMATS)}.",
            fix="set int8_format to 'qdq' or 'qoperator' in the profile.",
        )
    method = str(s.get("calibrate_method") or profile.options.get("int8_calibration", "minmax")).lower()
    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"Profile '{profile.name}' asks for int8_calibration '{method}'. "
            f"Available: {', '.join(CALIBRATION_METHODS)}.",
            fix="set int8_calibration to one of the listed methods.",
        )
    reduce_range = bool(s.get("reduce_range", profile.options.get("int8_reduce_range", False)))
    per_channel = bool(s.get("per_channel", True))
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    activation = str(s.get("activation_type", "uint8"))
    weight = str(s.get("weight_type", "int8"))

    prepared = work / "prepared.onnx"
    pre_process = "optimised + symbolic shape inference"
    try:
        quant_pre_process(str(source), str(prepared))
    except Exception as first:  # symbolic shape inference rejects some graphs; plain ONNX inference still helps
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime's quantisation pre-processing failed: {exc} (with symbolic shapes: {first})",
                fix="simplify the model or choose fp32.",
            ) from exc
        pre_process = "optimised, without symbolic shape inference"
    exclude: list[str] = []
    if s.get("ignored_scope"):
        import onnx

        graph = onnx.load(str(prepared), load_external_data=False).graph
        exclude = ignored_node_names([(n.name, n.op_type) for n in graph.node], s["ignored_scope"])
    record: dict[str, Any] = {
        "quantizer": f"onnxruntime.quantization.quantize_{mode}",
        "mode": mode,
        "reduce_range": reduce_range,
        "per_channel": per_channel,
        "weight_type": weight,
        "nodes_excluded": exclude,
        "pre_process": pre_process,
    }
    if mode == "dynamic":
        try:
            quantize_dynamic(
                str(prepared), str(dest), per_channel=per_channel, reduce_range=reduce_range,
                weight_type=types[weight], nodes_to_exclude=exclude or None,
            )
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime dynamic INT8 quantisation failed: {exc}",
                fix="use mode = 'static' (dynamic quantisation suits MatMul/LSTM/attention models).",
            ) from exc
        if not quantized_ops(dest):
            raise ConversionError(
                "ONNX Runtime dynamic quantisation found nothing to quantise in this model (it takes Conv, MatMul, "
                "Attention and LSTM; Gemm layers stay FP32).",
                fix="use mode = 'static' for this model.",
            )
        return {**record, "format": "qoperator (integer ops)", "activation_type": "uint8 (computed at run time)"}

    feeds = conform_feeds(cast(Feeds, calibration), artifact.inputs)
    if profile.static_batch:
        feeds = rebatch(feeds, profile.static_batch)
    if s.get("subset_size"):
        feeds = take_samples(feeds, int(s["subset_size"]))
    try:
        quantize_static(
            str(prepared),
            str(dest),
            feeds.ort_reader(),
            quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=types[activation],
            weight_type=types[weight],
            nodes_to_exclude=exclude or None,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
        )
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"ONNX Runtime INT8 quantisation ({fmt}, {method}) failed: {exc}",
            fix="check the calibration data matches the model's inputs, or try another int8_format.",
        ) from exc
    return {
        **record,
        "format": fmt,
        "activation_type": activation,
        "calibration_method": method,
        "calibration_samples": feeds.num_samples,
        "calibration_batches": len(feeds),
    }


# Operators that only move or select values: a quantized tensor stays on its quantization grid through them.
_GRID_PRESERVING = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})


def complete_qdq(source: Path, dest: Path) -> list[str]:
    """Give each Conv/Gemm/MatMul whose weight is dequantized, but whose input reaches it from a DequantizeLinear
    only through MaxPool/Flatten/Reshape-like operators, its own QuantizeLinear/DequantizeLinear pair with the same
    scale; writes ``dest`` and returns the layers changed (empty: nothing written).

    Why: NNCF's QAT export places activation quantizers before pooling and flattening (right for OpenVINO, which
    propagates them), and ONNX Runtime then runs such a layer in FP32. The pair is lossless: those operators keep
    values on the grid, so quantizing again with the same scale and zero point returns them unchanged.
    """
    import onnx
    from onnx import helper

    proto = onnx.load(str(source))
    nodes = list(proto.graph.node)
    producers = {out: n for n in nodes for out in n.output}
    changed: list[str] = []
    for node in list(nodes):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = producers.get(node.input[1])
        first = producers.get(node.input[0])
        if weight is None or weight.op_type != "DequantizeLinear" or first is None:
            continue
        if first.op_type == "DequantizeLinear":
            continue
        cur: Any = first
        while cur is not None and cur.op_type in _GRID_PRESERVING:
            cur = producers.get(cur.input[0])
        if cur is None or cur.op_type != "DequantizeLinear":
            continue
        value = node.input[0]
        tag = f"{node.name or value}/completed"
        axis = [a for a in cur.attribute if a.name == "axis"]
        q = helper.make_node("QuantizeLinear", [value, *cur.input[1:]], [f"{tag}_q"], name=f"{tag}_q")
        dq = helper.make_node("DequantizeLinear", [f"{tag}_q", *cur.input[1:]], [f"{tag}_dq"], name=f"{tag}_dq")
        q.attribute.extend(axis)
        dq.attribute.extend(axis)
        node.input[0] = f"{tag}_dq"
        at = nodes.index(node)
        nodes[at:at] = [q, dq]
        changed.append(node.name or value)
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        onnx.save(proto, str(dest))
    return changed


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


__all__ = ["CALIBRATION_METHODS", "INT8_FORMATS", "OnnxRuntimeConverter", "complete_qdq", "fix_batch_dim"]
